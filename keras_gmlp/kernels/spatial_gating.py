"""The Spatial Gating Unit's element-wise work as two fused kernels each way.

`SpatialGatingUnit.call` and `GMLPBlock.call` state the math; this computes the same thing on
the TensorFlow CPU path. Around the token-mixing matmul `W @ v` there are two regions, each one
XLA kernel forward and one backward (float32 inside, the compute dtype outside):

- before it, `mask * LayerNorm(v)`;
- after it, `u * (W @ v + b + attention)`.

Inside a `GMLPBlock` the block's first projection is computed as two matmuls, one per half, and
both kernels also apply the block's bias and GELU to their half (`gelu_spatial_gating_unit`), so
the d_ffn-wide GELU output is never written out and no kernel splits or joins the halves:
forward and backward touch about half the memory that separate GELU, split and gate kernels did.
Measured on 4 gMLP-S blocks forward+backward (`python -m benchmarks.run --sections variants`, 2
cores): the previous layout (bias+GELU kernel, split, SGU kernels) ran at 0.96x, the SGU's
element-wise work as plain ops at 0.94x, and the whole plain path (`keras_gmlp.kernels.disabled`)
at 0.92x (float32; 0.73x to 0.88x in mixed_bfloat16, see benchmarks/README.md).

Optional inputs travel as dicts (`optional`) through `ops.custom_gradient`, and the gradient
function returns a dict with the same keys: TensorFlow flattens both the same way, so no
gradient has to be put at the position of its input by hand.
"""

from keras import ops

from keras_gmlp.kernels.fusion import fused
from keras_gmlp.kernels.gelu import gelu_derivative
from keras_gmlp.kernels.gelu import gelu_value
from keras_gmlp.kernels.layer_norm import normalize
from keras_gmlp.kernels.layer_norm import normalize_backward
from keras_gmlp.kernels.reductions import column_sum
from keras_gmlp.kernels.reductions import row_sum


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


def normalize_gate(v, gamma, beta, epsilon, mask=None, gelu_bias=None):
    """`mask * LayerNorm(a)` with `a = gelu(v + gelu_bias)`, or `a = v` without `gelu_bias`.

    Args:
        v: `(..., n, c)` in the compute dtype.
        gamma, beta: `(c,)` float32, the gate's LayerNorm.
        epsilon: float.
        mask: optional float32 `(..., n, 1)`, 1 for real tokens.
        gelu_bias: optional float32 `(c,)`.

    Returns:
        `(..., n, c)` in `v`'s dtype.
    """
    optional = {} if gelu_bias is None else {"gelu_bias": gelu_bias}

    def forward(v, gamma, beta, optional):
        bias = optional.get("gelu_bias")
        out, inv = _normalize_forward(v, bias, gamma, beta, mask, epsilon)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_v, d_gamma_terms = _normalize_backward(v, bias, gamma, inv, mask, upstream)
            d_beta = column_sum(upstream if mask is None else ops.cast(upstream, "float32") * mask)
            d_optional = {"gelu_bias": column_sum(d_v)} if "gelu_bias" in optional else {}
            return d_v, column_sum(d_gamma_terms), d_beta, d_optional

        return out, grad

    return ops.custom_gradient(forward)(v, gamma, beta, optional)


def _gate(mixed, spatial_bias, attention):
    gate = ops.cast(mixed, "float32") + ops.expand_dims(spatial_bias, -1)
    if attention is not None:
        gate = gate + ops.cast(attention, "float32")
    return gate


@fused
def _product_forward(u, bias, mixed, spatial_bias, attention):
    _, a = _activate(u, bias)
    return ops.cast(a * _gate(mixed, spatial_bias, attention), u.dtype)


@fused
def _product_backward(u, bias, mixed, spatial_bias, attention, upstream):
    z, a = _activate(u, bias)
    upstream = ops.cast(upstream, "float32")
    d_a = upstream * _gate(mixed, spatial_bias, attention)
    d_z = d_a if bias is None else d_a * gelu_derivative(z)
    d_gate = upstream * a
    # The spatial bias is per token: sum over channels (as a matvec, see reductions), then batch.
    d_spatial_bias = ops.sum(row_sum(d_gate)[..., 0], axis=tuple(range(len(u.shape) - 2)))
    grads = {"u": ops.cast(d_z, u.dtype), "mixed": ops.cast(d_gate, mixed.dtype), "spatial_bias": d_spatial_bias}
    if attention is not None:
        grads["attention"] = ops.cast(d_gate, attention.dtype)
    return grads


def gate_product(u, mixed, spatial_bias, attention=None, gelu_bias=None):
    """`a * (mixed + spatial_bias[:, None] + attention)` with `a = gelu(u + gelu_bias)`, or
    `a = u` without `gelu_bias`.

    Args:
        u: `(..., n, c)` in the compute dtype.
        mixed: `(..., n, c)`, the token-mixing product `W @ v`.
        spatial_bias: `(n,)` float32.
        attention: optional `(..., n, c)`, aMLP's tiny attention output.
        gelu_bias: optional float32 `(c,)`.

    Returns:
        `(..., n, c)` in `u`'s dtype.
    """
    optional = {name: t for name, t in (("attention", attention), ("gelu_bias", gelu_bias)) if t is not None}

    def forward(u, mixed, spatial_bias, optional):
        bias, attention = optional.get("gelu_bias"), optional.get("attention")

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            grads = _product_backward(u, bias, mixed, spatial_bias, attention, upstream)
            d_optional = {}
            if attention is not None:
                d_optional["attention"] = grads["attention"]
            if bias is not None:
                d_optional["gelu_bias"] = column_sum(grads["u"])
            return grads["u"], grads["mixed"], grads["spatial_bias"], d_optional

        return _product_forward(u, bias, mixed, spatial_bias, attention), grad

    return ops.custom_gradient(forward)(u, mixed, spatial_bias, optional)


def _gating(sgu, u, v, padding_mask, attention, u_bias, v_bias):
    length = v.shape[-2] if v.shape[-2] is not None else ops.shape(v)[-2]
    mask = None
    if padding_mask is not None:
        mask = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
    v = normalize_gate(
        v,
        ops.cast(sgu.norm.gamma, "float32"),
        ops.cast(sgu.norm.beta, "float32"),
        float(sgu.norm.epsilon),
        mask=mask,
        gelu_bias=v_bias,
    )
    kernel = ops.cast(sgu.spatial_kernel[:length, :length], v.dtype)
    if sgu.causal:
        kernel = ops.tril(kernel)
    # A (n, n) @ (batch, n, d) broadcast matmul: no transposes of the activations (an einsum ran
    # at 0.91x, a transpose to one (n, n) @ (n, batch * d) matmul at 0.89x).
    mixed = ops.matmul(kernel, v)
    spatial_bias = ops.cast(sgu.spatial_bias[:length], "float32")
    return gate_product(u, mixed, spatial_bias, attention=attention, gelu_bias=u_bias)


def spatial_gating_unit(sgu, inputs, padding_mask=None, attention=None):
    """What `SpatialGatingUnit.call` computes, on `sgu`'s weights, in fused kernels."""
    u, v = ops.split(ops.cast(inputs, sgu.compute_dtype), 2, axis=-1)
    return _gating(sgu, u, v, padding_mask, attention, None, None)


def gelu_spatial_gating_unit(sgu, u, v, u_bias, v_bias, padding_mask=None, attention=None):
    """`sgu` applied to `gelu(concat(u + u_bias, v + v_bias))`, in fused kernels that apply
    the GELU themselves.

    Args:
        sgu: a built `SpatialGatingUnit`.
        u, v: `(batch, n, c)` pre-activations of the two halves (a Dense layer's matmul
            without its bias), in the compute dtype.
        u_bias, v_bias: `(c,)`, the Dense layer's bias halves.
        padding_mask, attention: as in `SpatialGatingUnit.call`.
    """
    return _gating(sgu, u, v, padding_mask, attention, ops.cast(u_bias, "float32"), ops.cast(v_bias, "float32"))
