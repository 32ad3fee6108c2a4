"""The Spatial Gating Unit's element-wise work as two fused kernels each way.

`SpatialGatingUnit.call` states the math; this computes the same thing on the TensorFlow CPU
path, as functions of tensors (the unit passes its own weights). Around the token-mixing matmul
`W @ v` there are two regions, each one XLA kernel forward and one backward (float32 inside, the
compute dtype outside):

- before it, `mask * LayerNorm(a(v))`;
- after it, `a(u) * (W @ v + b + attention)`;

where `a` is the exact GELU inside a `GMLPBlock` (whose Dense layers hand the unit their
pre-activations `u` and `v`) and the identity otherwise. Applying the GELU inside these kernels
means the d_ffn-wide GELU output is never written out or stored for the backward pass, which
recomputes it: forward and backward touch about half the memory that separate GELU and gate
kernels did. Measured on 4 gMLP-S blocks forward+backward (`python -m benchmarks.run --sections
variants`, 2 cores): a separate bias+GELU kernel before the SGU kernels ran at 0.96x, the SGU's
element-wise work as plain ops at 0.94x (0.91x mixed_bfloat16), and everything as plain ops with
Keras' GELU and LayerNorm differentiated by autodiff, as the layers' plain path is, at 0.79x
(0.63x mixed_bfloat16).

Optional inputs travel as dicts (`optional`) through `ops.custom_gradient`, and the gradient
function returns a dict with the same keys: TensorFlow flattens both the same way, so no
gradient has to be put at the position of its input by hand.
"""

from keras import ops

from keras_gmlp.kernels.fusion import fused
from keras_gmlp.kernels.gelu import gelu_derivative
from keras_gmlp.kernels.gelu import gelu_value
from keras_gmlp.kernels.normalization import normalize
from keras_gmlp.kernels.normalization import normalize_backward
from keras_gmlp.kernels.reductions import column_sum
from keras_gmlp.kernels.reductions import row_sum


def _activate(x, gelu):
    """Float32 `(z, a)`: `z = x` and `a = gelu(z)`, or `a = z` without `gelu`."""
    z = ops.cast(x, "float32")
    return z, (gelu_value(z) if gelu else z)


@fused
def _normalize_forward(v, gamma, beta, mask, epsilon, gelu):
    _, a = _activate(v, gelu)
    normalized, inv = normalize(a, epsilon)
    out = normalized * gamma + beta
    if mask is not None:
        out = out * mask
    return ops.cast(out, v.dtype), inv


@fused
def _normalize_backward(v, gamma, inv, mask, upstream, gelu):
    z, a = _activate(v, gelu)
    d_out = ops.cast(upstream, "float32")
    if mask is not None:
        d_out = d_out * mask
    d_a, normalized = normalize_backward(a, inv, d_out * gamma)
    d_z = d_a * gelu_derivative(z) if gelu else d_a
    return ops.cast(d_z, v.dtype), d_out * normalized


def normalize_gate(v, gamma, beta, epsilon, mask=None, gelu=False):
    """`mask * LayerNorm(a)` with `a = gelu(v)` (exact GELU), or `a = v` without `gelu`.

    Args:
        v: `(..., n, c)` in the compute dtype.
        gamma, beta: `(c,)` float32, the gate's LayerNorm.
        epsilon: float.
        mask: optional float32 `(..., n, 1)`, 1 for real tokens.
        gelu: bool, apply the exact GELU to `v` first.

    Returns:
        `(..., n, c)` in `v`'s dtype.
    """
    gelu = bool(gelu)

    def forward(v, gamma, beta):
        out, inv = _normalize_forward(v, gamma, beta, mask, epsilon, gelu)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_v, d_gamma_terms = _normalize_backward(v, gamma, inv, mask, upstream, gelu)
            d_beta = column_sum(upstream if mask is None else ops.cast(upstream, "float32") * mask)
            return d_v, column_sum(d_gamma_terms), d_beta

        return out, grad

    return ops.custom_gradient(forward)(v, gamma, beta)


def _gate(mixed, spatial_bias, attention):
    gate = ops.cast(mixed, "float32") + ops.expand_dims(spatial_bias, -1)
    if attention is not None:
        gate = gate + ops.cast(attention, "float32")
    return gate


@fused
def _product_forward(u, mixed, spatial_bias, attention, gelu):
    _, a = _activate(u, gelu)
    return ops.cast(a * _gate(mixed, spatial_bias, attention), u.dtype)


@fused
def _product_backward(u, mixed, spatial_bias, attention, upstream, gelu):
    z, a = _activate(u, gelu)
    upstream = ops.cast(upstream, "float32")
    d_a = upstream * _gate(mixed, spatial_bias, attention)
    d_z = d_a * gelu_derivative(z) if gelu else d_a
    d_gate = upstream * a
    # The spatial bias is per token: sum over channels (as a matvec, see reductions), then batch.
    d_spatial_bias = ops.sum(row_sum(d_gate)[..., 0], axis=tuple(range(len(u.shape) - 2)))
    grads = {"u": ops.cast(d_z, u.dtype), "mixed": ops.cast(d_gate, mixed.dtype), "spatial_bias": d_spatial_bias}
    if attention is not None:
        grads["attention"] = ops.cast(d_gate, attention.dtype)
    return grads


def gate_product(u, mixed, spatial_bias, attention=None, gelu=False):
    """`a * (mixed + spatial_bias[:, None] + attention)` with `a = gelu(u)` (exact GELU), or
    `a = u` without `gelu`.

    Args:
        u: `(..., n, c)` in the compute dtype.
        mixed: `(..., n, c)`, the token-mixing product `W @ v`.
        spatial_bias: `(n,)` float32.
        attention: optional `(..., n, c)`, aMLP's tiny attention output.
        gelu: bool, apply the exact GELU to `u` first.

    Returns:
        `(..., n, c)` in `u`'s dtype.
    """
    gelu = bool(gelu)
    optional = {} if attention is None else {"attention": attention}

    def forward(u, mixed, spatial_bias, optional):
        attention = optional.get("attention")

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            grads = _product_backward(u, mixed, spatial_bias, attention, upstream, gelu)
            d_optional = {"attention": grads["attention"]} if attention is not None else {}
            return grads["u"], grads["mixed"], grads["spatial_bias"], d_optional

        return _product_forward(u, mixed, spatial_bias, attention, gelu), grad

    return ops.custom_gradient(forward)(u, mixed, spatial_bias, optional)


def spatial_gating(u, v, gamma, beta, epsilon, spatial_kernel, spatial_bias, causal=False,
                   padding_mask=None, attention=None, gelu=False):
    """`a(u) * (W @ (mask * LayerNorm(a(v))) + b + attention)` in fused kernels, `a` the exact
    GELU with `gelu` and the identity without: what `SpatialGatingUnit.call` computes.

    Args:
        u, v: `(batch, n, c)`, the bypass and gate halves, in the compute dtype.
        gamma, beta: `(c,)`, the gate LayerNorm's scale and offset; epsilon: its float epsilon.
        spatial_kernel: `(N, N)` with N >= n, `W` stored (out, in); its leading `(n, n)` block
            is used (lower triangle with `causal`).
        spatial_bias: `(N,)`, the per-position bias `b`.
        padding_mask: optional `(batch, n)`, nonzero for real tokens.
        attention: optional `(batch, n, c)`, added to the gate before the product.
        gelu: bool, `a` is the exact GELU.

    Returns:
        `(batch, n, c)` in `u`'s dtype.
    """
    length = v.shape[-2] if v.shape[-2] is not None else ops.shape(v)[-2]
    mask = None
    if padding_mask is not None:
        mask = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
    v = normalize_gate(v, ops.cast(gamma, "float32"), ops.cast(beta, "float32"), float(epsilon),
                       mask=mask, gelu=gelu)
    kernel = ops.cast(spatial_kernel[:length, :length], v.dtype)
    if causal:
        kernel = ops.tril(kernel)
    # A (n, n) @ (batch, n, d) broadcast matmul: no transposes of the activations (an einsum ran
    # at 0.91x, a transpose to one (n, n) @ (n, batch * d) matmul at 0.89x).
    mixed = ops.matmul(kernel, v)
    spatial_bias = ops.cast(spatial_bias[:length], "float32")
    return gate_product(u, mixed, spatial_bias, attention=attention, gelu=gelu)
