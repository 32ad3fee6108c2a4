"""The Spatial Gating Unit of gMLP (Liu et al. 2021, section 2.1)."""

import keras
from keras import ops

from keras_gmlp.layers.fusion import fused
from keras_gmlp.layers.layer_norm import FastLayerNormalization
from keras_gmlp.layers.layer_norm import normalize
from keras_gmlp.layers.layer_norm import normalize_backward
from keras_gmlp.layers.masking import causal_mask
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask


# The element-wise work around the token-mixing matmul, as two fused kernels each way (see
# keras_gmlp.layers.fusion): split + LayerNorm(v) + padding mask before it, bias + gate product
# after it. Float32 inside, the compute dtype outside.
@fused
def _split_normalize_forward(x, gamma, beta, mask, epsilon):
    u, v = ops.split(x, 2, axis=-1)
    normalized, inv = normalize(ops.cast(v, "float32"), epsilon)
    v = normalized * gamma + beta
    if mask is not None:
        v = v * mask
    return u, ops.cast(v, x.dtype), inv


@fused
def _split_normalize_backward(x, gamma, inv, mask, d_u, d_v):
    _, v = ops.split(x, 2, axis=-1)
    d_v = ops.cast(d_v, "float32")
    if mask is not None:
        d_v = d_v * mask
    d_v_in, normalized = normalize_backward(ops.cast(v, "float32"), inv, d_v * gamma)
    axes = tuple(range(len(x.shape) - 1))
    d_x = ops.concatenate([ops.cast(d_u, x.dtype), ops.cast(d_v_in, x.dtype)], axis=-1)
    return d_x, ops.sum(d_v * normalized, axis=axes), ops.sum(d_v, axis=axes)


def _split_normalize(x, gamma, beta, mask, epsilon):
    """`u, mask * LayerNorm(v)` for `u, v = split(x)`, with a written-out gradient."""

    @ops.custom_gradient
    def _forward(x, gamma, beta):
        u, v, inv = _split_normalize_forward(x, gamma, beta, mask, epsilon)

        def grad(*args, upstream=None):
            # TensorFlow passes one upstream gradient per output, JAX one tuple of them.
            d_u, d_v = upstream if upstream is not None else (args[0] if len(args) == 1 else args)
            d_u = ops.zeros_like(u) if d_u is None else d_u
            d_v = ops.zeros_like(v) if d_v is None else d_v
            return _split_normalize_backward(x, gamma, inv, mask, d_u, d_v)

        return (u, v), grad

    return _forward(x, gamma, beta)


def _gate_input(mixed, bias, gate_bias):
    gate = ops.cast(mixed, "float32") + ops.expand_dims(bias, -1)
    if gate_bias is not None:
        gate = gate + ops.cast(gate_bias, "float32")
    return gate


@fused
def _gate_forward(u, mixed, bias, gate_bias):
    return ops.cast(ops.cast(u, "float32") * _gate_input(mixed, bias, gate_bias), u.dtype)


@fused
def _gate_backward(u, mixed, bias, gate_bias, upstream):
    upstream = ops.cast(upstream, "float32")
    d_u = upstream * _gate_input(mixed, bias, gate_bias)
    d_gate = upstream * ops.cast(u, "float32")
    d_bias = ops.sum(d_gate, axis=tuple(i for i in range(len(u.shape)) if i != len(u.shape) - 2))
    return ops.cast(d_u, u.dtype), ops.cast(d_gate, mixed.dtype), d_bias, d_gate


def _gate(u, mixed, bias, gate_bias):
    """`u * (mixed + bias[:, None] + gate_bias)` with a written-out gradient."""
    if gate_bias is None:

        @ops.custom_gradient
        def _forward(u, mixed, bias):
            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                return _gate_backward(u, mixed, bias, None, upstream)[:3]

            return _gate_forward(u, mixed, bias, None), grad

        return _forward(u, mixed, bias)

    @ops.custom_gradient
    def _forward_with_gate_bias(u, mixed, bias, gate_bias):
        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_u, d_mixed, d_bias, d_gate = _gate_backward(u, mixed, bias, gate_bias, upstream)
            return d_u, d_mixed, d_bias, ops.cast(d_gate, gate_bias.dtype)

        return _gate_forward(u, mixed, bias, gate_bias), grad

    return _forward_with_gate_bias(u, mixed, bias, gate_bias)


@keras.saving.register_keras_serializable(package="keras_gmlp")
class SpatialGatingUnit(keras.layers.Layer):
    """Gates one half of the channels with a learned projection over tokens.

    The input's channels are split into `u` (bypass) and `v` (gate). `v` is
    layer-normalised, mixed across the token axis by a learned
    `(sequence_length, sequence_length)` matrix `W` plus a per-position bias
    `b`, and multiplies `u`:

        out[m] = u[m] * (sum_j W[m, j] * LayerNorm(v)[j] + b[m] + gate_bias[m])

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
        gate_bias: optional `(batch, n, channels // 2)` added to the spatial
            projection before the product (aMLP's tiny attention).

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
        if not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(
                f"`sequence_length` must be a positive int, got {sequence_length!r}."
            )
        self.sequence_length = sequence_length
        self.causal = bool(causal)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.spatial_kernel_initializer = keras.initializers.get(
            spatial_kernel_initializer
            or keras.initializers.RandomNormal(stddev=1e-6)
        )
        self.spatial_bias_initializer = keras.initializers.get(spatial_bias_initializer)
        self.supports_masking = True
        self.norm = FastLayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        if channels is None or channels % 2:
            raise ValueError(
                f"SpatialGatingUnit splits its input's channels in two halves, so the last "
                f"dimension must be even; got input shape {input_shape}."
            )
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

    def call(self, inputs, padding_mask=None, gate_bias=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        length = inputs.shape[-2]
        check_sequence_length(self.name, length, self.sequence_length)
        if length is None:
            length = ops.shape(inputs)[-2]
        mask = None
        if padding_mask is not None:
            mask = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
        u, v = _split_normalize(
            inputs,
            ops.cast(self.norm.gamma, "float32"),
            ops.cast(self.norm.beta, "float32"),
            mask,
            float(self.layer_norm_epsilon),
        )
        kernel = ops.cast(self.spatial_kernel[:length, :length], v.dtype)
        if self.causal:
            kernel = ops.where(causal_mask(length), kernel, ops.zeros_like(kernel))
        # A (n, n) @ (batch, n, d) broadcast matmul: no transposes of the activations.
        mixed = ops.matmul(kernel, v)
        return _gate(u, mixed, ops.cast(self.spatial_bias[:length], "float32"), gate_bias)

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
