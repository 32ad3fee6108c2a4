"""The gMLP block: pre-norm channel MLP around a Spatial Gating Unit."""

import keras
from keras import ops

from keras_gmlp.kernels import FastLayerNormalization
from keras_gmlp.layers.legacy import OLD_NAME as LEGACY_NAME
from keras_gmlp.layers.legacy import LegacyProjectionLoader
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.quantization import dtype_config
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

    `Dense_ffn` is two Dense layers of `ffn_dim // 2` units,
    `channel_projection_u` (the SGU's bypass half `u`, the first half of
    timm's `fc1`) and `channel_projection_v` (the gate half `v`), as
    keras-hub's Gemma keeps `ffw_gating` and `ffw_gating_2`: the block calls
    each Dense layer (so LoRA and quantization act on them), the SGU takes
    `[u, v]` as a pair and applies the GELU itself, and a model-parallel
    layout splits both by columns without moving `u` against `v`. Files from
    before the split (one `channel_projection_in` of `ffn_dim` columns, `u`
    then `v`) load into the two layers (`keras_gmlp.layers.legacy`).

    Args:
        hidden_dim: int, the block's input and output channels (d_model).
        ffn_dim: int, even, width of the first projection (d_ffn); the SGU
            halves it.
        sequence_length: int, the longest token axis (the SGU's `n`); with
            `spatial_projection="toeplitz"` inputs may be longer.
        tiny_attention_dim: optional int, the aMLP attention size (paper: 64).
        dropout: float, dropout rate on the block's output branch.
        drop_path_rate: float, probability of dropping the whole residual
            branch per example (stochastic depth, 1 - survival probability).
        causal: bool, position `i` only reads positions `j <= i`.
        layer_norm_epsilon: float, epsilon of the block's LayerNorm (timm: 1e-6).
        gate_norm_epsilon: float, epsilon of the SGU's LayerNorm (timm: 1e-5).
        kernel_initializer: initializer of the channel projections.
        spatial_projection: the SGU's token mixing, `"dense"` (the paper's
            `(n, n)` W, default) or `"toeplitz"` (`W[m, j] = t(m - j)`, any
            length, O(n log n); see `SpatialGatingUnit`).

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
        spatial_projection="dense",
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
        # A LayerNorm that picks its fused kernel itself where it helps (timm's fast_norm).
        self.norm = FastLayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name="norm")
        u_initializer, v_initializer = _half_width_initializers(
            self.kernel_initializer, hidden_dim, ffn_dim)
        self.channel_projection_u = keras.layers.Dense(
            ffn_dim // 2,
            kernel_initializer=u_initializer,
            dtype=policy,
            name="channel_projection_u",
        )
        self.channel_projection_v = keras.layers.Dense(
            ffn_dim // 2,
            kernel_initializer=v_initializer,
            dtype=policy,
            name="channel_projection_v",
        )
        # Files from before the split: their one first projection loads into u and v.
        self.channel_projection_in = LegacyProjectionLoader(self, dtype=policy, name=LEGACY_NAME)
        self.spatial_gating_unit = SpatialGatingUnit(
            sequence_length,
            causal=causal,
            layer_norm_epsilon=gate_norm_epsilon,
            activation="gelu",
            spatial_projection=spatial_projection,
            dtype=policy,
            name="spatial_gating_unit",
        )
        self.spatial_projection = self.spatial_gating_unit.spatial_projection  # checked there
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
        half_shape = input_shape[:-1] + (self.ffn_dim // 2,)
        self.norm.build(input_shape)
        self.channel_projection_u.build(input_shape)
        self.channel_projection_v.build(input_shape)
        self.spatial_gating_unit.build([half_shape, half_shape])
        if self.tiny_attention is not None:
            self.tiny_attention.build(input_shape)
        self.channel_projection_out.build(half_shape)

    def call(self, inputs, padding_mask=None, training=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        if self.spatial_projection == "dense":  # the Toeplitz mixing takes any length
            check_sequence_length(self.name, inputs.shape[-2], self.sequence_length)
        x = self.norm(inputs)
        attention = None
        if self.tiny_attention is not None:
            attention = self.tiny_attention(x, padding_mask=padding_mask)
        # The Dense layers see (batch * n, channels): on TensorFlow's CPU path a 2-D MatMul and
        # its BiasAdd run as one oneDNN call (grappler's remapper), while Keras' tensordot for a
        # 3-D input puts a Reshape between them and the bias costs a pass over memory of its own.
        tokens = ops.shape(inputs)[1]
        flat = ops.reshape(x, (-1, self.hidden_dim))
        # Pre-activations: the SGU applies the GELU to both halves (in its fused kernels on the
        # TensorFlow CPU path), so the ffn_dim-wide activation is never stored.
        u = ops.reshape(self.channel_projection_u(flat), (-1, tokens, self.ffn_dim // 2))
        v = ops.reshape(self.channel_projection_v(flat), (-1, tokens, self.ffn_dim // 2))
        x = self.spatial_gating_unit([u, v], padding_mask=padding_mask, attention=attention)
        x = self.channel_projection_out(ops.reshape(x, (-1, self.ffn_dim // 2)))
        x = ops.reshape(x, (-1, tokens, self.hidden_dim))
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
                "dtype": dtype_config(self),
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
                "spatial_projection": self.spatial_projection,
            }
        )
        return config


def _half_width_initializers(initializer, hidden_dim, ffn_dim):
    """Initializers of the `(hidden_dim, ffn_dim // 2)` `u` and `v` kernels: the two column
    halves of one `(hidden_dim, ffn_dim)` draw of `initializer`, as the single projection had
    before the split.

    Keras' initializers are seeded at construction (an int seed gives the same values on every
    call), so both halves come from one draw, with the full kernel's fan and variance, and a
    seeded run initialises exactly as before the split (the README's quick-start numbers).
    """
    full_shape = (hidden_dim, ffn_dim)
    return (ColumnHalfInitializer(initializer, full_shape, 0),
            ColumnHalfInitializer(initializer, full_shape, 1))


@keras.saving.register_keras_serializable(package="keras_gmlp")
class ColumnHalfInitializer(keras.initializers.Initializer):
    """Column half `half` (0 or 1) of `initializer` drawn at `full_shape` (rows, 2 * columns).

    A stateful (SeedGenerator) initializer draws anew on each call, so its two halves are then
    independent draws of the same distribution.
    """

    def __init__(self, initializer, full_shape, half):
        self.initializer = keras.initializers.get(initializer)
        self.full_shape = tuple(int(d) for d in full_shape)
        check(half in (0, 1), "half", half, "0 (the first columns) or 1 (the last columns)")
        check(len(self.full_shape) == 2 and self.full_shape[1] % 2 == 0, "full_shape",
              full_shape, "(rows, an even number of columns)")
        self.half = half

    def __call__(self, shape, dtype=None):
        rows, columns = self.full_shape
        check(tuple(shape) == (rows, columns // 2), "shape", tuple(shape),
              f"{(rows, columns // 2)}, half of full_shape {self.full_shape}")
        full = self.initializer(self.full_shape, dtype=dtype)
        return full[:, self.half * (columns // 2):(self.half + 1) * (columns // 2)]

    def get_config(self):
        return {"initializer": keras.initializers.serialize(self.initializer),
                "full_shape": list(self.full_shape), "half": self.half}
