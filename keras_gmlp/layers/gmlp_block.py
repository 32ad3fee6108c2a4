"""The gMLP block: pre-norm channel MLP around a Spatial Gating Unit."""

import keras
from keras import ops

from keras_gmlp.layers.layer_norm import FastLayerNormalization
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.layers.tiny_attention import TinyAttention


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
        if not isinstance(ffn_dim, int) or ffn_dim < 2 or ffn_dim % 2:
            raise ValueError(
                f"`ffn_dim` must be an even int >= 2 (the SGU splits it in halves), got {ffn_dim!r}."
            )
        for name, rate in (("dropout", dropout), ("drop_path_rate", drop_path_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {rate!r}.")
        self.hidden_dim = hidden_dim
        self.ffn_dim = ffn_dim
        self.sequence_length = sequence_length
        self.tiny_attention_dim = tiny_attention_dim
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.causal = bool(causal)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.gate_norm_epsilon = gate_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

        policy = self.dtype_policy
        self.norm = FastLayerNormalization(
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
        if input_shape[-1] != self.hidden_dim:
            raise ValueError(
                f"{self.name} has hidden_dim={self.hidden_dim} but received inputs with "
                f"{input_shape[-1]} channels (shape {input_shape})."
            )
        ffn_shape = input_shape[:-1] + (self.ffn_dim,)
        self.norm.build(input_shape)
        self.channel_projection_in.build(input_shape)
        self.spatial_gating_unit.build(ffn_shape)
        if self.tiny_attention is not None:
            self.tiny_attention.build(input_shape)
        self.channel_projection_out.build(input_shape[:-1] + (self.ffn_dim // 2,))

    def call(self, inputs, padding_mask=None, training=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        x = self.norm(inputs)
        gate_bias = None
        if self.tiny_attention is not None:
            gate_bias = self.tiny_attention(x, padding_mask=padding_mask)
        # The first projection as two matmuls, one per SGU half; its bias and GELU run inside the
        # SGU's fused kernels, so its d_ffn-wide output is never split, joined or stored whole.
        # The Dense layer keeps the weights (columns [:ffn_dim // 2] make u, the rest v).
        kernel = ops.cast(self.channel_projection_in.kernel, x.dtype)
        u_kernel, v_kernel = ops.split(kernel, 2, axis=-1)
        x = self.spatial_gating_unit.gate_halves(
            ops.matmul(x, u_kernel),
            ops.matmul(x, v_kernel),
            padding_mask=padding_mask,
            gate_bias=gate_bias,
            activation_biases=ops.split(self.channel_projection_in.bias, 2),
        )
        x = self.channel_projection_out(x)
        x = self.output_dropout(x, training=training)
        return inputs + self.drop_path(x, training=training)

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
