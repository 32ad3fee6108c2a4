"""gMLP written from the paper's equations in NumPy, the independent truth for the tests.

Nothing here imports keras_gmlp. Weights are plain dicts of arrays; kernels of
dense layers are (in, out), the spatial W is (out, in) as in the paper.
"""

import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def dense(x, kernel, bias):
    return x @ kernel + bias


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def spatial_gating_unit(x, w, b, gamma, beta, eps=1e-5, mask=None, causal=False, attention=None):
    """out[m] = u[m] * (sum_j W[m, j] LN(v)[j] + b[m] (+ attention[m]))."""
    n = x.shape[1]
    u, v = np.split(x, 2, axis=-1)
    v = layer_norm(v, gamma, beta, eps)
    if mask is not None:
        v = v * mask[:, :, None]
    w = w[:n, :n]
    if causal:
        w = np.tril(w)
    out = np.einsum("mj,bjd->bmd", w, v) + b[:n, None]
    if attention is not None:
        out = out + attention
    return u * out


def tiny_attention(x, wqkv, bqkv, wo, bo, dim, mask=None, causal=False):
    qkv = dense(x, wqkv, bqkv)
    q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
    scores = np.einsum("bqd,bkd->bqk", q, k) / math.sqrt(dim)
    n = x.shape[1]
    allowed = np.ones((x.shape[0], n, n), bool)
    if mask is not None:
        allowed &= mask[:, None, :].astype(bool)
    if causal:
        allowed &= np.tril(np.ones((n, n), bool))[None]
    scores = np.where(allowed, scores, -1e9)
    return dense(softmax(scores) @ v, wo, bo)


def gmlp_block(x, p, eps=1e-6, gate_eps=1e-5, mask=None, causal=False, attention_dim=None):
    """x + Dense_d(SGU(GELU(Dense_ffn(LN(x))), attn(LN(x))))."""
    h = layer_norm(x, p["norm_gamma"], p["norm_beta"], eps)
    attention = None
    if attention_dim:
        attention = tiny_attention(
            h, p["wqkv"], p["bqkv"], p["wo"], p["bo"], attention_dim, mask=mask, causal=causal
        )
    z = gelu(dense(h, p["w1"], p["b1"]))
    z = spatial_gating_unit(
        z, p["w_spatial"], p["b_spatial"], p["gate_gamma"], p["gate_beta"], gate_eps,
        mask=mask, causal=causal, attention=attention,
    )
    return x + dense(z, p["w2"], p["b2"])


def random_block_params(rng, d, ffn, n, attention_dim=None):
    """Non-trivial weights: spatial W of unit scale, LayerNorm gains away from 1."""
    p = {
        "norm_gamma": rng.uniform(0.5, 1.5, d), "norm_beta": rng.normal(0, 0.1, d),
        "w1": rng.normal(0, d**-0.5, (d, ffn)), "b1": rng.normal(0, 0.1, ffn),
        "gate_gamma": rng.uniform(0.5, 1.5, ffn // 2), "gate_beta": rng.normal(0, 0.1, ffn // 2),
        "w_spatial": rng.normal(0, n**-0.5, (n, n)), "b_spatial": rng.normal(1, 0.1, n),
        "w2": rng.normal(0, (ffn // 2) ** -0.5, (ffn // 2, d)), "b2": rng.normal(0, 0.1, d),
    }
    if attention_dim:
        p.update(
            wqkv=rng.normal(0, d**-0.5, (d, 3 * attention_dim)),
            bqkv=rng.normal(0, 0.1, 3 * attention_dim),
            wo=rng.normal(0, attention_dim**-0.5, (attention_dim, ffn // 2)),
            bo=rng.normal(0, 0.1, ffn // 2),
        )
    return {k: v.astype(np.float32) for k, v in p.items()}


def patch_embed(images, kernel, bias, patch):
    """Conv with kernel = stride = patch, as reshapes and one matmul. kernel: (p, p, c, d)."""
    b, h, w, c = images.shape
    patches = images.reshape(b, h // patch, patch, w // patch, patch, c)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), -1)
    return patches @ kernel.reshape(-1, kernel.shape[-1]) + bias


def toeplitz_rpe_coefficient(kernels, biases, decay, heads, causal=False):
    """The Toeplitz projection's `t(k)` as a function: offset -> (heads,) coefficients.

    `t_h(k) = decay^|k| * MLP(log(1 + |k|))[h]` for k >= 0 and `[heads + h]` for k < 0 (zero when
    causal); the MLP has ReLU between its dense layers.
    """

    def t(k):
        h = np.array([math.log1p(abs(k))])
        for i, (w, b) in enumerate(zip(kernels, biases)):
            h = h @ w + b
            if i < len(kernels) - 1:
                h = np.maximum(h, 0.0)
        if k < 0 and causal:
            return np.zeros(heads)
        return (h[heads:] if k < 0 else h[:heads]) * decay ** abs(k)

    return t


def toeplitz_projection(v, t, b, heads, mask=None):
    """y[m] = sum_j W_h[m, j] v[j] + b, with the dense W_h[m, j] = t(m - j)[h] built entry by entry.

    v: (batch, n, channels), channel group h (of `heads` equal groups) mixed by W_h; b: (channels,).
    """
    batch, n, channels = v.shape
    if mask is not None:
        v = v * mask[:, :, None]
    w = np.zeros((heads, n, n))
    for m in range(n):
        for j in range(n):
            w[:, m, j] = t(m - j)
    grouped = v.reshape(batch, n, heads, channels // heads)
    return np.einsum("hmj,bjhc->bmhc", w, grouped).reshape(batch, n, channels) + b


def toeplitz_spatial_gating_unit(x, t, b, gamma, beta, eps=1e-5, mask=None, attention=None, heads=1):
    """out[m] = u[m] * (sum_j t(m - j) LN(v)[j] + b (+ attention[m])), b one value per channel."""
    u, v = np.split(x, 2, axis=-1)
    out = toeplitz_projection(layer_norm(v, gamma, beta, eps), t, b, heads, mask=mask)
    if attention is not None:
        out = out + attention
    return u * out


def toeplitz_gmlp_block(x, p, t, b, eps=1e-6, gate_eps=1e-5, mask=None):
    """gmlp_block with the Toeplitz SGU: x + Dense_d(SGU_T(GELU(Dense_ffn(LN(x)))))."""
    h = layer_norm(x, p["norm_gamma"], p["norm_beta"], eps)
    z = gelu(dense(h, p["w1"], p["b1"]))
    z = toeplitz_spatial_gating_unit(z, t, b, p["gate_gamma"], p["gate_beta"], gate_eps, mask=mask)
    return x + dense(z, p["w2"], p["b2"])
