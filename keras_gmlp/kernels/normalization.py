"""LayerNorm over the last axis as fused kernels with a closed-form gradient.

Keras' LayerNormalization differentiated by autodiff runs about ten element-wise kernels forward
and more backward; this runs one each way, `inv * (g - mean(g) - xhat * mean(g * xhat))`
backward, recomputing the normalised input from `x` and the saved inverse standard deviation
rather than keeping it. Keras' LayerNorm in a gMLP-S block stack cost 0.88x the block's speed
(float32, `python -m benchmarks.run --sections variants`).
"""

import keras
from keras import ops

from keras_gmlp.kernels import switch
from keras_gmlp.kernels.fusion import fused
from keras_gmlp.kernels.reductions import column_sum
from keras_gmlp.kernels.reductions import row_mean


def normalize(x, epsilon):
    """`(x - mean) / sqrt(var + epsilon)` over the last axis of float32 `x`, and the inverse
    standard deviation (kept for the backward pass)."""
    centered = x - row_mean(x)
    inv = ops.rsqrt(row_mean(ops.square(centered)) + epsilon)
    return centered * inv, inv


def normalize_backward(x, inv, d_normalized):
    """dL/dx of `normalize` given dL/dxhat, all float32:
    `inv * (g - mean(g) - xhat * mean(g * xhat))`, means over the last axis."""
    normalized = (x - row_mean(x)) * inv
    d_x = inv * (d_normalized - row_mean(d_normalized) - normalized * row_mean(d_normalized * normalized))
    return d_x, normalized


@fused
def _forward(x, gamma, beta, epsilon):
    normalized, inv = normalize(ops.cast(x, "float32"), epsilon)
    return ops.cast(normalized * gamma + beta, x.dtype), inv


@fused
def _backward(x, gamma, inv, upstream):
    upstream = ops.cast(upstream, "float32")
    d_x, normalized = normalize_backward(ops.cast(x, "float32"), inv, upstream * gamma)
    return ops.cast(d_x, x.dtype), upstream * normalized


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm of `x` over its last axis, statistics in float32, returned in `x`'s dtype.

    Args:
        x: a floating-point tensor.
        gamma, beta: `(x.shape[-1],)` scale and shift (variables or tensors, any float dtype).
        epsilon: float.
    """
    gamma, beta = ops.cast(gamma, "float32"), ops.cast(beta, "float32")
    epsilon = float(epsilon)

    @ops.custom_gradient
    def _layer_norm(x, gamma, beta):
        normalized, inv = _forward(x, gamma, beta, epsilon)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_x, d_gamma_terms = _backward(x, gamma, inv, upstream)
            return d_x, column_sum(d_gamma_terms), column_sum(upstream)

        return normalized, grad

    return _layer_norm(x, gamma, beta)


def supports(layer, inputs):
    """Whether the fused `layer_norm` computes what the Keras LayerNormalization `layer` does
    (one last axis, centred and scaled, no RMS scaling)."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(inputs.shape)
    return [a % rank for a in axes] == [rank - 1] and layer.center and layer.scale and not layer.rms_scaling


@keras.saving.register_keras_serializable(package="keras_gmlp")
class FastLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` that runs the fused `layer_norm` where it helps.

    Same weights (`gamma`, `beta`), arguments, config and outputs as the Keras layer. Where
    `keras_gmlp.kernels.active()` (TensorFlow on the CPU) and the configuration is one last
    axis, centred and scaled, it runs one fused kernel forward and one backward; otherwise it
    is Keras' layer. `GMLPBlock`'s pre-norm is one; it also serves models of one's own.
    """

    def call(self, inputs):
        if switch.active() and supports(self, inputs):
            return layer_norm(ops.cast(inputs, self.compute_dtype), self.gamma, self.beta, self.epsilon)
        return super().call(inputs)
