"""Exact (erf) GELU, optionally with the preceding bias add, as fused kernels with written-out
gradients."""

import math

import keras
from keras import ops

from keras_gmlp.layers.fusion import fused
from keras_gmlp.layers.reductions import column_sum

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _cdf(z):
    # Phi(z) = (1 + erf(z / sqrt 2)) / 2, PyTorch's and timm's formula. TF's own gelu uses
    # erfc(-z / sqrt 2) / 2, equal to within float32 rounding; erf is the faster kernel.
    return 0.5 + 0.5 * ops.erf(_SQRT_HALF * z)


def gelu_value(z):
    """`z * Phi(z)` of a float32 tensor, as plain ops (for use inside fused kernels)."""
    return z * _cdf(z)


def gelu_derivative(z):
    """d/dz z Phi(z) = Phi(z) + z phi(z) of a float32 tensor, as plain ops."""
    return _cdf(z) + z * (_INV_SQRT_2PI * ops.exp(-0.5 * ops.square(z)))


# Float32 inside, the input's dtype outside: under mixed bfloat16 the matmuls around GELU stay in
# bfloat16, while the erf is computed at full precision. The backward pass recomputes Phi from the
# input instead of keeping it from the forward pass: one stored tensor fewer per block.
@fused
def _gelu_forward(x):
    z = ops.cast(x, "float32")
    return ops.cast(gelu_value(z), x.dtype)


@fused
def _gelu_backward(x, upstream):
    z = ops.cast(x, "float32")
    return ops.cast(ops.cast(upstream, "float32") * gelu_derivative(z), x.dtype)


@fused
def _bias_gelu_forward(x, bias):
    z = ops.cast(x, "float32") + bias
    return ops.cast(gelu_value(z), x.dtype)


@fused
def _bias_gelu_backward(x, bias, upstream):
    z = ops.cast(x, "float32") + bias
    return ops.cast(ops.cast(upstream, "float32") * gelu_derivative(z), x.dtype)


@ops.custom_gradient
def _gelu(x):
    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return _gelu_backward(x, upstream)

    return _gelu_forward(x), grad


@ops.custom_gradient
def _bias_gelu(x, bias):
    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        d_x = _bias_gelu_backward(x, bias, upstream)
        return d_x, column_sum(d_x)

    return _bias_gelu_forward(x, bias), grad


def gelu_exact(x, bias=None):
    """The exact GELU `z * Phi(z)` of `z = x + bias` (not the tanh approximation).

    This is the activation of timm's and the paper's gMLP. It is computed in
    float32 and returned in `x`'s dtype, one fused kernel forward and one
    backward (see `keras_gmlp.layers.fusion`), with the gradient written out
    as `Phi(z) + z * phi(z)`. Under mixed bfloat16 the matmuls around it stay
    in bfloat16; TensorFlow's CPU kernels for element-wise bfloat16 math
    are slower than their float32 forms and less accurate.

    Args:
        x: a floating-point tensor.
        bias: optional tensor of shape `(x.shape[-1],)` added before the
            activation (a Dense layer's bias, fused with the activation).

    Returns:
        A tensor of `x`'s shape and dtype.
    """
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) not in ("float16", "bfloat16", "float32", "float64"):
        x = ops.cast(x, "float32")
    if bias is None:
        return _gelu(x)
    return _bias_gelu(x, ops.cast(bias, "float32"))
