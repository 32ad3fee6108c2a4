"""Where a gMLP block's time goes: implementation variants timed side by side.

A stack of gMLP-S blocks (batch 8, 196 tokens, d 256, d_ffn 1536) is run
forward and backward (gradients for inputs and weights). The first rows are
keras_gmlp's own `GMLPBlock`: as shipped (its keras_gmlp.kernels path:
element-wise kernels fused by XLA, matmuls on TensorFlow's kernels), its plain
path (`keras_gmlp.kernels.disabled()`: the paper's keras.ops, autodiff), and
with XLA compiling the whole step. The others are a copy of the block built
from keras_gmlp.kernels' public functions that changes one thing at a time: the layout
(an older one: one d_ffn-wide projection, a bias+GELU kernel, a split,
then the SGU kernels), the SGU's
token-mixing product (broadcast matmul, einsum, transpose to one large
matmul), the SGU's split/LayerNorm/gate as plain ops, GELU (Keras' GELU
differentiated by autodiff, as keras_gmlp did first; tanh), LayerNorm
(Keras' LayerNormalization), and lower bounds with LayerNorm and/or GELU
removed. Variants are interleaved over
rounds and the minimum is reported, since contention on a shared machine
only adds time.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from benchmarks import flops
from benchmarks.common import release
from benchmarks.timing import measure
from keras_gmlp import kernels
from keras_gmlp.layers import GMLPBlock


@kernels.fused
def _bias_gelu_forward(x, bias):
    return ops.cast(kernels.gelu_value(ops.cast(x, "float32") + bias), x.dtype)


@kernels.fused
def _bias_gelu_backward(x, bias, upstream):
    z = ops.cast(x, "float32") + bias
    return ops.cast(ops.cast(upstream, "float32") * kernels.gelu_derivative(z), x.dtype)


@ops.custom_gradient
def _fused_bias_gelu(x, bias):
    """The previous layout's GELU: `gelu(x + bias)` as its own fused kernel each way."""

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        d_x = _bias_gelu_backward(x, bias, upstream)
        return d_x, kernels.column_sum(d_x)

    return _bias_gelu_forward(x, bias), grad


def _gelu(x, kind):
    if kind == "autodiff":  # keras_gmlp before: Keras' gelu in the compute dtype
        return ops.gelu(x, approximate=False)
    if kind == "autodiff_float32":
        return ops.cast(ops.gelu(ops.cast(x, "float32"), approximate=False), x.dtype)
    if kind == "tanh":
        return ops.gelu(x, approximate=True)
    if kind == "none":
        return x
    raise ValueError(kind)


def _layer_norm(x, gamma, beta, kind, epsilon):
    if kind == "none":
        return x
    if kind == "fused":  # keras_gmlp.kernels' LayerNorm
        return kernels.layer_norm(x, gamma, beta, epsilon)
    return ops.cast(ops.layer_normalization(x, gamma, beta, epsilon=epsilon), x.dtype)


def _spatial(kernel, v, kind):
    if kind == "broadcast_matmul":
        return ops.matmul(kernel, v)
    if kind == "einsum":
        return ops.einsum("mn,bnd->bmd", kernel, v)
    if kind == "transpose_one_matmul":
        batch, n, d = ops.shape(v)[0], v.shape[1], v.shape[2]
        flat = ops.reshape(ops.transpose(v, (1, 0, 2)), (n, -1))
        return ops.transpose(ops.reshape(ops.matmul(kernel, flat), (n, batch, d)), (1, 0, 2))
    raise ValueError(kind)


def _block(x, w, options, compute_dtype):
    cast = lambda t: ops.cast(t, compute_dtype)  # noqa: E731
    h = _layer_norm(x, w["norm_gamma"], w["norm_beta"], options["layernorm"], 1e-6)
    gate_gamma, gate_beta = ops.cast(w["gate_gamma"], "float32"), ops.cast(w["gate_beta"], "float32")
    spatial_bias = ops.cast(w["spatial_bias"], "float32")
    if options["sgu_elementwise"] == "halves":  # keras_gmlp's GMLPBlock
        # Two Dense layers (matmul + bias) for u and v; the SGU kernels apply the GELU.
        u_kernel, v_kernel = ops.split(cast(w["in_kernel"]), 2, axis=-1)
        u_bias, v_bias = ops.split(cast(w["in_bias"]), 2)
        v = kernels.normalize_gate(ops.matmul(h, v_kernel) + v_bias, gate_gamma, gate_beta, 1e-5, gelu=True)
        mixed = _spatial(cast(w["spatial_kernel"]), v, options["sgu"])
        h = kernels.gate_product(ops.matmul(h, u_kernel) + u_bias, mixed, spatial_bias, gelu=True)
    else:
        h = ops.matmul(h, cast(w["in_kernel"]))
        if options["gelu"] == "fused":
            h = _fused_bias_gelu(h, ops.cast(w["in_bias"], "float32"))
        else:
            h = _gelu(h + cast(w["in_bias"]), options["gelu"])
        u, v = ops.split(h, 2, axis=-1)
        if options["sgu_elementwise"] == "split":  # the previous layout: GELU, split, SGU kernels
            v = kernels.normalize_gate(v, gate_gamma, gate_beta, 1e-5)
            h = kernels.gate_product(u, _spatial(cast(w["spatial_kernel"]), v, options["sgu"]), spatial_bias)
        else:
            v = _layer_norm(v, w["gate_gamma"], w["gate_beta"], options["layernorm"], 1e-5)
            v = _spatial(cast(w["spatial_kernel"]), v, options["sgu"]) + cast(w["spatial_bias"])[:, None]
            h = u * v
    h = ops.matmul(h, cast(w["out_kernel"])) + cast(w["out_bias"])
    return x + h


DEFAULTS = dict(sgu="broadcast_matmul", sgu_elementwise="halves", gelu="fused", layernorm="fused")
PLAIN_SGU = dict(sgu_elementwise="plain")
SPLIT = dict(sgu_elementwise="split")  # GELU as its own kernel: needed by every GELU variant
VARIANTS = {
    "GMLPBlock's ops, functional copy": {},
    "previous layout: bias+GELU kernel, split, then SGU kernels": SPLIT,
    "first version: Keras GELU and LayerNorm (autodiff), plain SGU":
        dict(gelu="autodiff", layernorm="keras", **PLAIN_SGU),
    "SGU split/LayerNorm/gate as plain ops": PLAIN_SGU,
    "GELU back to Keras' (autodiff, compute dtype)": dict(gelu="autodiff", **SPLIT),
    "LayerNorm back to Keras' (autodiff)": dict(layernorm="keras", **PLAIN_SGU),
    "SGU einsum": dict(sgu="einsum"),
    "SGU transpose + one (n,n)@(n,b*d) matmul": dict(sgu="transpose_one_matmul"),
    "GELU tanh approximation (exact stays the default)": dict(gelu="tanh", **SPLIT),
    "no GELU (bound)": dict(gelu="none", **SPLIT),
    "no LayerNorm (bound)": dict(layernorm="none", **PLAIN_SGU),
    "matmuls only (bound)": dict(gelu="none", layernorm="none", **PLAIN_SGU),
}
BF16_VARIANTS = {
    "GELU by autodiff, in float32": dict(gelu="autodiff_float32", **SPLIT),
}
LAYER = "GMLPBlock layer (keras_gmlp)"
LAYER_PLAIN = "GMLPBlock layer, plain path (kernels.disabled(): keras.ops, autodiff)"


def _weights(num_layers, n, d, f, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(num_layers):
        layers.append({
            "norm_gamma": np.ones(d), "norm_beta": np.zeros(d),
            "in_kernel": rng.normal(0, 0.05, (d, f)), "in_bias": np.zeros(f),
            "gate_gamma": np.ones(f // 2), "gate_beta": np.zeros(f // 2),
            "spatial_kernel": rng.normal(0, 0.02, (n, n)), "spatial_bias": np.ones(n),
            "out_kernel": rng.normal(0, 0.05, (f // 2, d)), "out_bias": np.zeros(d),
        })
    return [{k: tf.Variable(v.astype("float32")) for k, v in layer.items()} for layer in layers]


def _functional_step(weights, options, compute_dtype, jit_compile):
    variables = [v for layer in weights for v in layer.values()]

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = ops.cast(x, compute_dtype)
            for w in weights:
                h = _block(h, w, options, compute_dtype)
            loss = ops.sum(ops.square(ops.cast(h, "float32")))
        return tape.gradient(loss, [x] + variables)

    return step


def _layer_step(num_layers, n, d, f, policy, jit_compile):
    blocks = [GMLPBlock(d, f, n, dtype=policy) for _ in range(num_layers)]
    for block in blocks:
        block.build((None, n, d))
    variables = [v for block in blocks for v in block.trainable_variables]

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for block in blocks:
                h = block(h, training=True)
            loss = ops.sum(ops.square(ops.cast(h, "float32")))
        return tape.gradient(loss, [x] + variables)

    return step


def run(quick=False, rounds=None, log=print):
    """Rows of (variant, policy, jit) with min/median fwd+bwd time and speedup vs the layer."""
    if quick:
        num_layers, batch, n, d, f, reps = 1, 2, 16, 16, 48, 2
    else:
        num_layers, batch, n, d, f, reps = 4, 8, 196, 256, 1536, 3
    rounds = rounds or (1 if quick else 3)
    x = tf.random.stateless_normal((batch, n, d), (0, 0))
    step_flops = flops.training(num_layers * flops.gmlp_block_forward(batch, n, d, f))
    cases = []
    for policy in ("float32", "mixed_bfloat16"):
        compute_dtype = "bfloat16" if policy == "mixed_bfloat16" else "float32"
        cases.append((LAYER, policy, False, None))
        cases.append((LAYER_PLAIN, policy, False, None))
        cases.append((LAYER, policy, True, None))
        variants = dict(VARIANTS, **(BF16_VARIANTS if compute_dtype == "bfloat16" else {}))
        for name, change in variants.items():
            cases.append((name, policy, False, (dict(DEFAULTS, **change), compute_dtype)))
    times = {}
    weights = _weights(num_layers, n, d, f)
    for _ in range(rounds):
        for name, policy, jit, functional in cases:
            release()
            keras.config.set_dtype_policy(policy)
            if functional is None:
                step = _layer_step(num_layers, n, d, f, policy, jit)
            else:
                step = _functional_step(weights, functional[0], functional[1], jit)
            # The kernels switch is read when the step is traced, on its first call.
            with kernels.disabled() if name == LAYER_PLAIN else contextlib.nullcontext():
                step(x)
            timing = measure(lambda: step(x), warmup=1, steps=reps)
            times.setdefault((name, policy, jit), []).extend(timing["times_s"])
    release()
    rows = []
    for (name, policy, jit), ts in times.items():
        base = min(times[(LAYER, policy, False)])
        row = {
            "section": "variants", "variant": name, "policy": policy, "jit_compile": jit,
            "num_layers": num_layers, "batch": batch, "tokens": n, "hidden_dim": d, "ffn_dim": f,
            "step_ms_min": 1e3 * min(ts), "step_ms": 1e3 * float(np.median(ts)), "step_times_s": ts,
            "gflops_best": step_flops / min(ts) / 1e9, "speedup_vs_baseline": base / min(ts),
        }
        log(row)
        rows.append(row)
    return rows
