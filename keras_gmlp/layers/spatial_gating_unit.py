"""The Spatial Gating Unit of gMLP (Liu et al. 2021, section 2.1)."""

import keras
from keras import ops

from keras_gmlp import kernels
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.validation import check
from keras_gmlp.validation import check_positive_float
from keras_gmlp.validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_gmlp")
class SpatialGatingUnit(keras.layers.Layer):
    """Gates one half of the channels with a learned projection over tokens.

    The input's channels are split into `u` (bypass) and `v` (gate). `v` is
    layer-normalised, mixed across the token axis by a learned
    `(sequence_length, sequence_length)` matrix `W` plus a per-position bias
    `b`, and multiplies `u`:

        out[m] = u[m] * (sum_j W[m, j] * LayerNorm(v)[j] + b[m] + attention[m])

    `W` starts near zero and `b` at one, so at initialisation the unit
    returns `u` and each gMLP block is a plain feed-forward network; the
    paper calls this critical for stable training.

    Inputs shorter than `sequence_length` use `W[:n, :n]` and `b[:n]`, so a
    model trained at length `sequence_length` serves any shorter length.

    Args:
        sequence_length: int, the longest token axis the unit accepts.
        causal: bool, if True position `m` only reads positions `j <= m`
            (`W` is made lower-triangular).
        layer_norm_epsilon: float, epsilon of the gate's LayerNorm (timm: 1e-5).
        spatial_kernel_initializer: initializer of `W`. Defaults to
            `RandomNormal(stddev=1e-6)` as in timm.
        spatial_bias_initializer: initializer of `b`. Defaults to ones.

    Call arguments:
        inputs: `(batch, n, channels)` with an even number of channels.
        padding_mask: optional `(batch, n)` bool/int, nonzero for real
            tokens. Padded positions are zeroed in `v` before the spatial
            projection, so they contribute nothing to any other position.
            A Keras mask is used when this is not given.
        attention: optional `(batch, n, channels // 2)`, aMLP's tiny
            attention output, added to the spatial projection before the
            product.

    Returns:
        `(batch, n, channels // 2)`.
    """

    def __init__(
        self,
        sequence_length,
        causal=False,
        layer_norm_epsilon=1e-5,
        spatial_kernel_initializer=None,
        spatial_bias_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.causal = bool(causal)
        self.layer_norm_epsilon = check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        self.spatial_kernel_initializer = keras.initializers.get(
            spatial_kernel_initializer
            or keras.initializers.RandomNormal(stddev=1e-6)
        )
        self.spatial_bias_initializer = keras.initializers.get(spatial_bias_initializer)
        self.supports_masking = True
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        check(channels is not None and channels % 2 == 0, f"{self.name} input shape", input_shape,
              "an even number of channels (the unit splits them in two halves)")
        check_sequence_length(self.name, input_shape[-2], self.sequence_length)
        self.norm.build(input_shape[:-1] + (channels // 2,))
        # Stored as (out, in) like timm's `proj.weight`, so W[m, j] reads as in the paper.
        self.spatial_kernel = self.add_weight(
            name="spatial_kernel",
            shape=(self.sequence_length, self.sequence_length),
            initializer=self.spatial_kernel_initializer,
        )
        self.spatial_bias = self.add_weight(
            name="spatial_bias",
            shape=(self.sequence_length,),
            initializer=self.spatial_bias_initializer,
        )

    def call(self, inputs, padding_mask=None, attention=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        check_sequence_length(self.name, inputs.shape[-2], self.sequence_length)
        if kernels.active():
            # The same math in fused kernels (keras_gmlp.kernels.spatial_gating).
            return kernels.spatial_gating_unit(self, inputs, padding_mask=padding_mask, attention=attention)
        u, v = ops.split(inputs, 2, axis=-1)
        v = self.norm(v)
        if padding_mask is not None:  # padded tokens contribute nothing to any position
            v = v * ops.expand_dims(ops.cast(padding_mask, v.dtype), -1)
        n = ops.shape(v)[-2]
        kernel = self.spatial_kernel[:n, :n]
        if self.causal:
            kernel = ops.tril(kernel)
        gate = ops.matmul(kernel, v) + ops.expand_dims(self.spatial_bias[:n], -1)
        if attention is not None:
            gate = gate + attention
        return u * gate

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        return input_shape[:-1] + (None if channels is None else channels // 2,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "causal": self.causal,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "spatial_kernel_initializer": keras.initializers.serialize(
                    self.spatial_kernel_initializer
                ),
                "spatial_bias_initializer": keras.initializers.serialize(
                    self.spatial_bias_initializer
                ),
            }
        )
        return config
