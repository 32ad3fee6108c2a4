"""The Spatial Gating Unit of gMLP (Liu et al. 2021, section 2.1)."""

import math

import keras
from keras import ops

from keras_gmlp import kernels
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.toeplitz import ToeplitzProjection
from keras_gmlp.validation import check
from keras_gmlp.validation import check_positive_float
from keras_gmlp.validation import check_positive_int

ACTIVATIONS = (None, "gelu")
SPATIAL_PROJECTIONS = ("dense", "toeplitz")
_SQRT_HALF = 1.0 / math.sqrt(2.0)


@keras.saving.register_keras_serializable(package="keras_gmlp")
def exact_gelu(x):
    """The exact (erf) GELU, `x * Phi(x)`, of the plain path.

    On TensorFlow it is written `0.5 * x * (1 + erf(x / sqrt 2))`: TensorFlow's own `gelu` uses
    `erfc`, which tf2onnx cannot convert, while this form is what the LiteRT converter fuses
    into its builtin GELU (no Flex ops) and ONNX has as `Erf`. The other backends use their own
    exact GELU (one kernel on PyTorch).
    """
    if keras.backend.backend() == "tensorflow":
        return 0.5 * x * (1.0 + ops.erf(x * _SQRT_HALF))
    return ops.gelu(x, approximate=False)


@keras.saving.register_keras_serializable(package="keras_gmlp")
class SpatialGatingUnit(keras.layers.Layer):
    """Gates one half of the channels with a learned projection over tokens.

    The unit takes `u` (bypass) and `v` (gate) either as one tensor whose
    channels it splits in two halves (`sgu(x)`, `u` first), or as a pair
    `sgu([u, v])` of equal widths: a `GMLPBlock` hands it the outputs of its
    two Dense projections that way, so column-sharded halves stay on their
    devices. `v` is layer-normalised, mixed across the token axis by a
    learned `(sequence_length, sequence_length)` matrix `W` plus a
    per-position bias `b`, and multiplies `u`:

        out[m] = u[m] * (sum_j W[m, j] * LayerNorm(v)[j] + b[m] + attention[m])

    With `activation="gelu"` both halves first go through the exact GELU
    (`u <- gelu(u)`, `v <- gelu(v)`): the block's `SGU(GELU(Z))`, computed
    inside the unit so that its fused kernels apply the GELU themselves.

    `W` starts near zero and `b` at one, so at initialisation the unit
    returns `u` and each gMLP block is a plain feed-forward network; the
    paper calls this critical for stable training.

    Inputs shorter than `sequence_length` use `W[:n, :n]` and `b[:n]`, so a
    model trained at length `sequence_length` serves any shorter length.

    With `spatial_projection="toeplitz"` the token mixing is
    `keras_gmlp.layers.ToeplitzProjection` instead: `W[m, j] = t(m - j)`
    with `t` from a small relative-position network (defined at every
    offset, zero at negative offsets when causal, near zero at
    initialisation) and one bias per channel, the same at every position.
    It has O(1) parameters in `n`, runs by FFT in O(n log n) from
    `toeplitz.FFT_CROSSOVER` tokens, and accepts inputs of any length,
    longer than `sequence_length` included. The fused TensorFlow-CPU
    kernels implement the dense form only; this mode takes the plain path.

    Args:
        sequence_length: int, the longest token axis the unit accepts.
        causal: bool, if True position `m` only reads positions `j <= m`
            (`W` is made lower-triangular).
        layer_norm_epsilon: float, epsilon of the gate's LayerNorm (timm: 1e-5).
        spatial_kernel_initializer: initializer of `W` ("dense") or of the
            coefficient network's output kernel ("toeplitz"). Defaults to
            `RandomNormal(stddev=1e-6)` as in timm.
        spatial_bias_initializer: initializer of `b`. Defaults to ones.
        activation: None or `"gelu"` (exact), applied to both halves first.
        spatial_projection: `"dense"` (the paper's `(n, n)` matrix, default)
            or `"toeplitz"` (see above).

    Call arguments:
        inputs: `(batch, n, channels)` with an even number of channels, or a
            pair `[u, v]` of `(batch, n, channels // 2)` tensors.
        padding_mask: optional `(batch, n)` bool/int, nonzero for real
            tokens. Padded positions are zeroed in `v` before the spatial
            projection, so they contribute nothing to any other position.
            A Keras mask is used when this is not given.
        attention: optional `(batch, n, channels // 2)`, aMLP's tiny
            attention output, added to the spatial projection before the
            product.

    On the TensorFlow CPU backend (`keras_gmlp.kernels.active()`) the unit
    runs `keras_gmlp.kernels.spatial_gating` on its own weights instead: the
    same math in fused kernels.

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
        activation=None,
        spatial_projection="dense",
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
        check(activation in ACTIVATIONS, "activation", activation,
              f"one of {ACTIVATIONS} (the exact GELU the fused kernels implement)")
        self.activation = activation
        check(spatial_projection in SPATIAL_PROJECTIONS, "spatial_projection", spatial_projection,
              f"one of {SPATIAL_PROJECTIONS}")
        self.spatial_projection = spatial_projection
        self.supports_masking = True
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.toeplitz_projection = None
        if spatial_projection == "toeplitz":
            self.toeplitz_projection = ToeplitzProjection(
                causal=self.causal,
                coefficient_initializer=self.spatial_kernel_initializer,
                bias_initializer=self.spatial_bias_initializer,
                dtype=self.dtype_policy,
                name="toeplitz_projection",
            )

    def build(self, input_shape):
        channels, length = self._half_width_and_length(input_shape)
        self.norm.build((None, length, channels))
        if self.toeplitz_projection is not None:  # any length: no (n, n) weights
            self.toeplitz_projection.build((None, length, channels))
            return
        check_sequence_length(self.name, length, self.sequence_length)
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
        if isinstance(mask, (list, tuple)):  # a pair's masks: `u`'s (both are the same tokens)
            mask = mask[0]
        padding_mask = resolve_padding_mask(padding_mask, mask)
        u, v = self._halves(inputs)
        if self.toeplitz_projection is not None:
            return self._toeplitz_call(u, v, padding_mask, attention)
        check_sequence_length(self.name, v.shape[-2], self.sequence_length)
        if kernels.active():
            # The same math in fused kernels, on this unit's weights. The gate LayerNorm is part
            # of the unit (its own sublayer, which Keras never adapts or quantizes), so the unit
            # passes its scale and offset to the kernel that fuses it with the GELU and mask.
            return kernels.spatial_gating(
                u, v, self.norm.gamma, self.norm.beta, self.norm.epsilon, self.spatial_kernel,
                self.spatial_bias, causal=self.causal, padding_mask=padding_mask,
                attention=attention, gelu=self.activation == "gelu")
        if self.activation == "gelu":
            u, v = exact_gelu(u), exact_gelu(v)
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

    def _toeplitz_call(self, u, v, padding_mask, attention):
        # The plain path on every backend: the fused kernels implement the dense W only.
        if self.activation == "gelu":
            u, v = exact_gelu(u), exact_gelu(v)
        gate = self.toeplitz_projection(self.norm(v), padding_mask=padding_mask)
        if attention is not None:
            gate = gate + attention
        return u * gate

    def _halves(self, inputs):
        if isinstance(inputs, (list, tuple)):
            u, v = inputs
            return ops.cast(u, self.compute_dtype), ops.cast(v, self.compute_dtype)
        return ops.split(ops.cast(inputs, self.compute_dtype), 2, axis=-1)

    def _half_width_and_length(self, input_shape):
        """`(c, n)` of the halves, checking the input's form: one tensor of `2c` channels or a
        pair of `c`-channel tensors."""
        if _is_pair(input_shape):
            check(len(input_shape) == 2, f"{self.name} input shapes", input_shape,
                  "one tensor or a pair [u, v]")
            u_shape, v_shape = (tuple(shape) for shape in input_shape)
            check(u_shape == v_shape and v_shape[-1] is not None, f"{self.name} input shapes",
                  input_shape, "a pair [u, v] of the same shape, with known channels")
            return v_shape[-1], v_shape[-2]
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        check(channels is not None and channels % 2 == 0, f"{self.name} input shape", input_shape,
              "an even number of channels (the unit splits them in two halves)")
        return channels // 2, input_shape[-2]

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        if _is_pair(input_shape):
            return tuple(input_shape[0])
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
                "activation": self.activation,
                "spatial_projection": self.spatial_projection,
            }
        )
        return config


def _is_pair(shape):
    return isinstance(shape, (list, tuple)) and len(shape) > 0 and isinstance(shape[0], (list, tuple))
