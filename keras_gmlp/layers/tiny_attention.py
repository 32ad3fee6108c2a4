"""aMLP's tiny single-head self-attention (Liu et al. 2021, section 4.2)."""

import math

import keras
from keras import ops

from keras_gmlp.layers.masking import causal_mask
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.quantization import dtype_config
from keras_gmlp.validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_gmlp")
class TinyAttention(keras.layers.Layer):
    """Single-head self-attention whose output is added to the SGU's gate.

    Reads the gMLP block's normalised input, attends with one head of size
    `attention_dim`, and projects to `output_dim` (the block's `ffn_dim // 2`).
    Scores and softmax run in float32 under mixed precision.

    Args:
        output_dim: int, channels of the output.
        attention_dim: int, size of the query, key and value (paper: 64).
        causal: bool, if True position `i` attends only to `j <= i`.

    Call arguments:
        inputs: `(batch, n, channels)`.
        padding_mask: optional `(batch, n)`, nonzero for real tokens; padded
            keys receive no attention. A Keras mask is used if not given.

    Returns:
        `(batch, n, output_dim)`.
    """

    def __init__(self, output_dim, attention_dim=64, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = check_positive_int("output_dim", output_dim)
        self.attention_dim = check_positive_int("attention_dim", attention_dim)
        self.causal = bool(causal)
        self.supports_masking = True
        self.qkv = keras.layers.Dense(3 * attention_dim, dtype=self.dtype_policy, name="qkv")
        self.output_projection = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="output_projection"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        self.output_projection.build(input_shape[:-1] + (self.attention_dim,))

    def call(self, inputs, padding_mask=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        query, key, value = ops.split(self.qkv(inputs), 3, axis=-1)
        scores = ops.einsum("bqd,bkd->bqk", ops.cast(query, "float32"), ops.cast(key, "float32"))
        scores = scores / math.sqrt(self.attention_dim)
        allowed = None
        if padding_mask is not None:
            allowed = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)
        if self.causal:
            length = ops.shape(inputs)[-2]
            causal = ops.expand_dims(causal_mask(length), 0)
            allowed = causal if allowed is None else ops.logical_and(allowed, causal)
        if allowed is not None:
            # A finite large negative keeps rows with no allowed key finite (uniform).
            scores = ops.where(allowed, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1)
        attended = ops.matmul(ops.cast(weights, value.dtype), value)
        return self.output_projection(attended)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dtype": dtype_config(self),
                "output_dim": self.output_dim,
                "attention_dim": self.attention_dim,
                "causal": self.causal,
            }
        )
        return config
