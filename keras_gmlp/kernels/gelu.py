"""The exact (erf) GELU and its derivative, as float32 keras.ops for use inside fused kernels.

Inside a `GMLPBlock` the GELU runs in the SGU's kernels (keras_gmlp.kernels.spatial_gating), in
float32 whatever the compute dtype: TensorFlow's CPU kernels for element-wise bfloat16 math are
slower than their float32 forms and less accurate. Its backward pass recomputes Phi from the
pre-activation instead of keeping it from the forward pass: one stored tensor fewer per block.
Keras' GELU differentiated by autodiff cost 0.83x the block's speed (float32, variants table).
"""

import math

from keras import ops

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _cdf(z):
    # Phi(z) = (1 + erf(z / sqrt 2)) / 2, PyTorch's and timm's formula. TF's own gelu uses
    # erfc(-z / sqrt 2) / 2, equal to within float32 rounding; erf is the faster kernel.
    return 0.5 + 0.5 * ops.erf(_SQRT_HALF * z)


def gelu_value(z):
    """`z * Phi(z)` of a float32 tensor."""
    return z * _cdf(z)


def gelu_derivative(z):
    """d/dz z Phi(z) = Phi(z) + z phi(z) of a float32 tensor."""
    return _cdf(z) + z * (_INV_SQRT_2PI * ops.exp(-0.5 * ops.square(z)))
