"""The Spatial Gating Unit of gMLP (Liu et al. 2021, section 2.1)."""

import keras
from keras import ops

from keras_gmlp.layers.fusion import fused
from keras_gmlp.layers.gelu import gelu_derivative
from keras_gmlp.layers.gelu import gelu_value
from keras_gmlp.layers.layer_norm import FastLayerNormalization
from keras_gmlp.layers.layer_norm import normalize
from keras_gmlp.layers.layer_norm import normalize_backward
from keras_gmlp.layers.masking import causal_mask
from keras_gmlp.layers.masking import check_sequence_length
from keras_gmlp.layers.masking import resolve_padding_mask
from keras_gmlp.layers.reductions import column_sum
from keras_gmlp.layers.reductions import row_sum


# The element-wise work around the token-mixing matmul is two fused kernels each way (see
# keras_gmlp.layers.fusion), float32 inside and the compute dtype outside: LayerNorm(v) with the
# padding mask before the matmul, the bias and the gate product after it. Inside a GMLPBlock the
# kernels also apply the block's GELU to each half (`gate_halves(activation_biases=...)`), so
# the d_ffn-wide GELU output is never written out and no kernel splits or concatenates the
# halves: forward and backward touch about half the memory that separate GELU, split and gate
# kernels did.


def _activate(x, bias):
    """Float32 `(z, a)`: `z = x + bias` and `a = gelu(z)`, or `z = a = x` without a bias."""
    z = ops.cast(x, "float32")
    if bias is None:
        return z, z
    z = z + bias
    return z, gelu_value(z)


@fused
def _normalize_forward(v, bias, gamma, beta, mask, epsilon):
    _, a = _activate(v, bias)
    normalized, inv = normalize(a, epsilon)
    out = normalized * gamma + beta
    if mask is not None:
        out = out * mask
    return ops.cast(out, v.dtype), inv


@fused
def _normalize_backward(v, bias, gamma, inv, mask, upstream):
    z, a = _activate(v, bias)
    d_out = ops.cast(upstream, "float32")
    if mask is not None:
        d_out = d_out * mask
    d_a, normalized = normalize_backward(a, inv, d_out * gamma)
    d_z = d_a if bias is None else d_a * gelu_derivative(z)
    return ops.cast(d_z, v.dtype), d_out * normalized


def _normalize_gate(v, bias, gamma, beta, mask, epsilon):
    """`mask * LayerNorm(a)` for `a = gelu(v + bias)` (or `v`), with a written-out gradient."""

    def forward(v, gamma, beta, *bias_arg):
        out, inv = _normalize_forward(v, bias, gamma, beta, mask, epsilon)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_v, d_gamma_terms = _normalize_backward(v, bias, gamma, inv, mask, upstream)
            d_gamma = column_sum(d_gamma_terms)
            d_beta = column_sum(upstream if mask is None else ops.cast(upstream, "float32") * mask)
            return (d_v, d_gamma, d_beta) + (() if bias is None else (column_sum(d_v),))

        return out, grad

    return ops.custom_gradient(forward)(v, gamma, beta, *(() if bias is None else (bias,)))


def _gate_input(mixed, spatial_bias, gate_bias):
    gate = ops.cast(mixed, "float32") + ops.expand_dims(spatial_bias, -1)
    if gate_bias is not None:
        gate = gate + ops.cast(gate_bias, "float32")
    return gate


@fused
def _product_forward(u, bias, mixed, spatial_bias, gate_bias):
    _, a = _activate(u, bias)
    return ops.cast(a * _gate_input(mixed, spatial_bias, gate_bias), u.dtype)


@fused
def _product_backward(u, bias, mixed, spatial_bias, gate_bias, upstream):
    z, a = _activate(u, bias)
    upstream = ops.cast(upstream, "float32")
    d_a = upstream * _gate_input(mixed, spatial_bias, gate_bias)
    d_z = d_a if bias is None else d_a * gelu_derivative(z)
    d_gate = upstream * a
    # The spatial bias is per token: sum over channels (as a matvec, see reductions), then batch.
    d_spatial_bias = ops.sum(row_sum(d_gate)[..., 0], axis=tuple(range(len(u.shape) - 2)))
    grads = (ops.cast(d_z, u.dtype), ops.cast(d_gate, mixed.dtype), d_spatial_bias)
    if gate_bias is not None:
        grads += (ops.cast(d_gate, gate_bias.dtype),)
    return grads


def _product(u, bias, mixed, spatial_bias, gate_bias):
    """`a * (mixed + spatial_bias[:, None] + gate_bias)` for `a = gelu(u + bias)` (or `u`), with
    a written-out gradient."""
    optional = tuple(t for t in (gate_bias, bias) if t is not None)

    def forward(u, mixed, spatial_bias, *optional_args):
        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            grads = _product_backward(u, bias, mixed, spatial_bias, gate_bias, upstream)
            return grads + (() if bias is None else (column_sum(grads[0]),))

        return _product_forward(u, bias, mixed, spatial_bias, gate_bias), grad

    return ops.custom_gradient(forward)(u, mixed, spatial_bias, *optional)


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
        u, v = ops.split(inputs, 2, axis=-1)
        return self.gate_halves(u, v, padding_mask=padding_mask, gate_bias=gate_bias, mask=mask)

    def gate_halves(self, u, v, padding_mask=None, gate_bias=None, activation_biases=None, mask=None):
        """The unit applied to its input already split into `u` and `v`.

        `GMLPBlock` calls this with the two halves of its first projection
        computed as two matmuls, so the halves are never split or joined in
        memory. With `activation_biases=(u_bias, v_bias)`, the halves are
        pre-activations: the unit uses `gelu(u + u_bias)` and
        `gelu(v + v_bias)`, computed inside its own fused kernels.

        Args:
            u: `(batch, n, c)`, the bypass half.
            v: `(batch, n, c)`, the gate half.
            padding_mask, gate_bias, mask: as in `call`.
            activation_biases: optional pair of `(c,)` tensors.

        Returns:
            `(batch, n, c)`.
        """
        u, v = ops.convert_to_tensor(u, self.compute_dtype), ops.convert_to_tensor(v, self.compute_dtype)
        if tuple(u.shape) != tuple(v.shape):
            raise ValueError(
                f"{self.name}.gate_halves needs `u` and `v` of the same shape, got u {tuple(u.shape)} "
                f"and v {tuple(v.shape)}."
            )
        padding_mask = resolve_padding_mask(padding_mask, mask)
        length = v.shape[-2]
        check_sequence_length(self.name, length, self.sequence_length)
        if length is None:
            length = ops.shape(v)[-2]
        u_bias = v_bias = None
        if activation_biases is not None:
            u_bias, v_bias = (ops.cast(b, "float32") for b in activation_biases)
        padding = None
        if padding_mask is not None:
            padding = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
        v = _normalize_gate(
            v,
            v_bias,
            ops.cast(self.norm.gamma, "float32"),
            ops.cast(self.norm.beta, "float32"),
            padding,
            float(self.layer_norm_epsilon),
        )
        kernel = ops.cast(self.spatial_kernel[:length, :length], v.dtype)
        if self.causal:
            kernel = ops.where(causal_mask(length), kernel, ops.zeros_like(kernel))
        # A (n, n) @ (batch, n, d) broadcast matmul: no transposes of the activations.
        mixed = ops.matmul(kernel, v)
        spatial_bias = ops.cast(self.spatial_bias[:length], "float32")
        return _product(u, u_bias, mixed, spatial_bias, gate_bias)

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
