"""The gMLP block: pre-norm channel MLP around a Spatial Gating Unit."""

import keras
from keras import ops

from keras_gmlp import kernels
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.layers.tiny_attention import TinyAttention
from keras_gmlp.validation import check
from keras_gmlp.validation import check_positive_float
from keras_gmlp.validation import check_positive_int
from keras_gmlp.validation import check_rate


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPBlock(keras.layers.Layer):
    """One gMLP block (aMLP when `tiny_attention_dim` is set).

        x + DropPath(Dropout(Dense_d(SGU(GELU(Dense_ffn(LayerNorm(x))), attn))))

    where `attn` is `TinyAttention(LayerNorm(x))` for aMLP and absent for
    gMLP. GELU is the exact (erf) form, as in timm and the paper's code.

    Args:
        hidden_dim: int, the block's input and output channels (d_model).
        ffn_dim: int, even, width of the first projection (d_ffn); the SGU
            halves it.
        sequence_length: int, the longest token axis (the SGU's `n`).
        tiny_attention_dim: optional int, the aMLP attention size (paper: 64).
        dropout: float, dropout rate on the block's output branch.
        drop_path_rate: float, probability of dropping the whole residual
            branch per example (stochastic depth, 1 - survival probability).
        causal: bool, position `i` only reads positions `j <= i`.
        layer_norm_epsilon: float, epsilon of the block's LayerNorm (timm: 1e-6).
        gate_norm_epsilon: float, epsilon of the SGU's LayerNorm (timm: 1e-5).
        kernel_initializer: initializer of the channel projections.

    Call arguments:
        inputs: `(batch, n, hidden_dim)`.
        padding_mask: optional `(batch, n)`, nonzero for real tokens.
        training: bool, enables dropout and stochastic depth.
    """

    def __init__(
        self,
        hidden_dim,
        ffn_dim,
        sequence_length,
        tiny_attention_dim=None,
        dropout=0.0,
        drop_path_rate=0.0,
        causal=False,
        layer_norm_epsilon=1e-6,
        gate_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.ffn_dim = check_positive_int("ffn_dim", ffn_dim)
        check(ffn_dim % 2 == 0, "ffn_dim", ffn_dim, "an even int (the SGU splits it in halves)")
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        if tiny_attention_dim is not None:
            tiny_attention_dim = check_positive_int("tiny_attention_dim", tiny_attention_dim)
        self.tiny_attention_dim = tiny_attention_dim
        self.dropout = check_rate("dropout", dropout)
        self.drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        self.causal = bool(causal)
        self.layer_norm_epsilon = check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        self.gate_norm_epsilon = check_positive_float("gate_norm_epsilon", gate_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

        policy = self.dtype_policy
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="norm"
        )
        self.channel_projection_in = keras.layers.Dense(
            ffn_dim,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="channel_projection_in",
        )
        self.spatial_gating_unit = SpatialGatingUnit(
            sequence_length,
            causal=causal,
            layer_norm_epsilon=gate_norm_epsilon,
            dtype=policy,
            name="spatial_gating_unit",
        )
        self.tiny_attention = None
        if tiny_attention_dim:
            self.tiny_attention = TinyAttention(
                ffn_dim // 2,
                attention_dim=tiny_attention_dim,
                causal=causal,
                dtype=policy,
                name="tiny_attention",
            )
        self.channel_projection_out = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="channel_projection_out",
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=policy, name="output_dropout")
        # Dropout with a per-example noise shape is stochastic depth, scaled like timm's DropPath.
        self.drop_path = keras.layers.Dropout(
            drop_path_rate, noise_shape=(None, 1, 1), dtype=policy, name="drop_path"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        check(input_shape[-1] == self.hidden_dim, f"{self.name} input shape", input_shape,
              f"{self.hidden_dim} channels (hidden_dim)")
        ffn_shape = input_shape[:-1] + (self.ffn_dim,)
        self.norm.build(input_shape)
        self.channel_projection_in.build(input_shape)
        self.spatial_gating_unit.build(ffn_shape)
        if self.tiny_attention is not None:
            self.tiny_attention.build(input_shape)
        self.channel_projection_out.build(input_shape[:-1] + (self.ffn_dim // 2,))

    def call(self, inputs, padding_mask=None, training=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        check_sequence_length(self.name, inputs.shape[-2], self.sequence_length)
        if kernels.active() and self._projection_is_plain():
            # The same math in fused kernels (keras_gmlp.kernels.gmlp_block).
            x = kernels.gmlp_block_gating(self, inputs, padding_mask=padding_mask)
        else:
            x = self.norm(inputs)
            attention = None
            if self.tiny_attention is not None:
                attention = self.tiny_attention(x, padding_mask=padding_mask)
            x = ops.gelu(self.channel_projection_in(x), approximate=False)
            x = self.spatial_gating_unit(x, padding_mask=padding_mask, attention=attention)
        x = self.channel_projection_out(x)
        x = self.output_dropout(x, training=training)
        return inputs + self.drop_path(x, training=training)

    def _projection_is_plain(self):
        # The kernels read `channel_projection_in`'s float kernel and bias themselves; a
        # quantized or LoRA-enabled Dense computes something else, so it takes the plain path.
        dense = self.channel_projection_in
        return dense.quantization_mode is None and not dense.lora_enabled

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "ffn_dim": self.ffn_dim,
                "sequence_length": self.sequence_length,
                "tiny_attention_dim": self.tiny_attention_dim,
                "dropout": self.dropout,
                "drop_path_rate": self.drop_path_rate,
                "causal": self.causal,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "gate_norm_epsilon": self.gate_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
