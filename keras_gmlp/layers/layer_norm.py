"""LayerNormalization over the last axis as fused kernels with a closed-form gradient."""

import keras
from keras import ops

from keras_gmlp.layers.fusion import fused
from keras_gmlp.layers.reductions import column_sum
from keras_gmlp.layers.reductions import row_mean


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
    """LayerNorm of `x` over its last axis with float32 `gamma` and `beta`, in `x`'s dtype.

    Statistics are computed in float32. Forward and backward are one fused
    kernel each (see `keras_gmlp.layers.fusion`); the backward pass
    recomputes the normalised input from `x` and the saved inverse standard
    deviation rather than keeping it.
    """

    @ops.custom_gradient
    def _layer_norm(x, gamma, beta):
        normalized, inv = _forward(x, gamma, beta, epsilon)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_x, d_gamma_terms = _backward(x, gamma, inv, upstream)
            return d_x, column_sum(d_gamma_terms), column_sum(upstream)

        return normalized, grad

    return _layer_norm(x, gamma, beta)


@keras.saving.register_keras_serializable(package="keras_gmlp")
class FastLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` as fused kernels with a closed-form gradient.

    Same weights (`gamma`, `beta`), arguments, config and outputs as the
    Keras layer, computed in float32 as Keras does and returned in the
    compute dtype. Keras' layer, differentiated by autodiff, runs about ten
    element-wise kernels forward and more backward; this one runs one each
    way (`inv * (g - mean(g) - xhat * mean(g * xhat))` backward). Other
    configurations (several axes, RMS scaling, no center or scale) use the
    Keras implementation.
    """

    def call(self, inputs):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        rank = len(inputs.shape)
        if [a % rank for a in axes] != [rank - 1] or self.rms_scaling or not (
            self.center and self.scale
        ):
            return super().call(inputs)
        return layer_norm(
            ops.cast(inputs, self.compute_dtype),
            ops.cast(self.gamma, "float32"),
            ops.cast(self.beta, "float32"),
            float(self.epsilon),
        )
