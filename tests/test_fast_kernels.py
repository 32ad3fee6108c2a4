"""The fused kernels' hand-written gradients (GELU with its bias, LayerNorm, the SGU's split and
gate) equal autodiff of the reference formulas, their forward passes equal Keras' layers and the
paper's equations, and the XLA-fused and plain forms of a block agree."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from keras_gmlp.layers import GMLPBlock
from keras_gmlp.layers import SpatialGatingUnit
from keras_gmlp.kernels import FastLayerNormalization
from keras_gmlp.kernels import disabled as fusion_disabled


@pytest.mark.parametrize("shape", [(3, 5, 8), (6, 8)])
def test_fast_layer_norm_matches_keras_values_and_gradients(rng, shape):
    fast = FastLayerNormalization(epsilon=1e-5)
    keras_ln = keras.layers.LayerNormalization(epsilon=1e-5)
    fast.build(shape)
    keras_ln.build(shape)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    for layer in (fast, keras_ln):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    x = tf.constant(rng.normal(loc=2.0, scale=3.0, size=shape).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))
    grads = []
    for layer in (fast, keras_ln):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
        grads.append(tape.gradient(out, [x, layer.gamma, layer.beta], upstream))
        np.testing.assert_allclose(out, ref.layer_norm(x.numpy(), gamma, beta, 1e-5), rtol=1e-5, atol=1e-5)
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fast_layer_norm_falls_back_for_other_axes(rng):
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    fast = FastLayerNormalization(axis=1)
    keras_ln = keras.layers.LayerNormalization(axis=1)
    np.testing.assert_allclose(fast(x), keras_ln(x), rtol=1e-6)
    assert FastLayerNormalization.from_config(fast.get_config()).axis == fast.axis


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_attention", [False, True])
def test_spatial_gating_unit_gradients_match_autodiff_of_the_equations(rng, with_mask, with_attention):
    batch, n, channels = 2, 6, 8
    sgu = SpatialGatingUnit(n)
    sgu.build((batch, n, 2 * channels))
    sgu.spatial_kernel.assign(rng.normal(scale=0.3, size=(n, n)).astype("float32"))
    sgu.spatial_bias.assign(rng.normal(size=n).astype("float32"))
    sgu.norm.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    sgu.norm.beta.assign(rng.normal(size=channels).astype("float32"))
    x = tf.constant(rng.normal(loc=1.0, scale=2.0, size=(batch, n, 2 * channels)).astype("float32"))
    mask = tf.constant([[1] * n, [1] * (n - 2) + [0] * 2]) if with_mask else None
    gate_bias = (tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
                 if with_attention else None)
    upstream = tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
    weights = [sgu.spatial_kernel, sgu.spatial_bias, sgu.norm.gamma, sgu.norm.beta]

    def equations():
        # The paper's SGU written with autodiff-able TF ops, independent of the fused kernels.
        u, v = tf.split(x, 2, axis=-1)
        mean, variance = tf.nn.moments(v, axes=[-1], keepdims=True)
        v = (v - mean) / tf.sqrt(variance + sgu.layer_norm_epsilon) * sgu.norm.gamma + sgu.norm.beta
        if mask is not None:
            v = v * tf.cast(mask, tf.float32)[..., None]
        gate = tf.matmul(sgu.spatial_kernel, v) + sgu.spatial_bias[:, None]
        if gate_bias is not None:
            gate = gate + gate_bias
        return u * gate

    sources = [x] + weights + ([gate_bias] if gate_bias is not None else [])
    results = []
    for fn in (lambda: sgu(x, padding_mask=mask, attention=gate_bias), equations):
        with tf.GradientTape() as tape:
            tape.watch([x] + ([gate_bias] if gate_bias is not None else []))
            out = fn()
        results.append((out, tape.gradient(out, sources, upstream)))
    (fast, fast_grads), (expected, expected_grads) = results
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(fast_grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_and_plain_kernels_agree_on_an_amlp_block(rng, policy):
    # The XLA-fused kernels and the same keras.ops run one by one (`fusion_disabled`, what
    # exports trace) must compute the same block, values and gradients.
    block = GMLPBlock(16, 32, 10, tiny_attention_dim=8, causal=True, dtype=policy)
    block.build((None, 10, 16))
    x = tf.constant(rng.normal(size=(3, 10, 16)).astype("float32"))
    mask = tf.constant([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.cast(block(x, padding_mask=mask), tf.float32)
            loss = tf.reduce_sum(out * tf.range(16, dtype=tf.float32))
        return [out] + tape.gradient(loss, [x] + block.trainable_variables)

    fused = tf.function(step)(x)
    with fusion_disabled():
        plain = tf.function(step)(x)
    for got, want in zip(fused, plain):
        if policy == "float32":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:  # the plain path rounds GELU and the gate to bfloat16, the kernels compute them in float32
            assert np.linalg.norm(got - want) <= 2e-2 * np.linalg.norm(want)


def _layer_norm_equation(x, gamma, beta, epsilon):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) / tf.sqrt(variance + epsilon) * gamma + beta


def _block_equations(block, x, mask, causal):
    # The paper's gMLP/aMLP block with autodiff-able TF ops on the block's own weights,
    # independent of keras_gmlp's kernels (which take the first projection as two halves and
    # apply its GELU inside the SGU).
    n = x.shape[1]
    padding = tf.cast(mask, tf.float32)[..., None]
    h = _layer_norm_equation(x, block.norm.gamma, block.norm.beta, block.layer_norm_epsilon)
    gate_bias = 0.0
    if block.tiny_attention is not None:
        attention = block.tiny_attention
        q, k, v = tf.split(h @ attention.qkv.kernel + attention.qkv.bias, 3, axis=-1)
        scores = tf.matmul(q, k, transpose_b=True) / np.sqrt(attention.attention_dim)
        allowed = tf.cast(mask, tf.bool)[:, None, :]
        if causal:
            allowed = tf.logical_and(allowed, tf.linalg.band_part(tf.ones((n, n), tf.bool), -1, 0))
        scores = tf.where(allowed, scores, -1e9)
        gate_bias = (tf.nn.softmax(scores) @ v) @ attention.output_projection.kernel
        gate_bias = gate_bias + attention.output_projection.bias
    projection = block.channel_projection_in
    z = tf.nn.gelu(h @ projection.kernel + projection.bias, approximate=False)
    u, v = tf.split(z, 2, axis=-1)
    sgu = block.spatial_gating_unit
    v = _layer_norm_equation(v, sgu.norm.gamma, sgu.norm.beta, sgu.layer_norm_epsilon) * padding
    w = sgu.spatial_kernel[:n, :n]
    if causal:
        w = tf.linalg.band_part(w, -1, 0)
    gate = tf.matmul(w, v) + sgu.spatial_bias[:n, None] + gate_bias
    out = block.channel_projection_out
    return x + (u * gate) @ out.kernel + out.bias


@pytest.mark.parametrize("attention_dim,causal", [(None, False), (4, True)], ids=["gmlp", "amlp-causal"])
def test_block_values_and_gradients_match_autodiff_of_the_equations(rng, attention_dim, causal):
    n, d, ffn = 9, 8, 24
    block = GMLPBlock(d, ffn, n, tiny_attention_dim=attention_dim, causal=causal)
    block.build((None, n, d))
    for variable in block.trainable_variables:
        # Spread-out weights (W far from its near-zero init) so every path carries gradient.
        scale = 0.5 if len(variable.shape) == 2 else 0.3
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype("float32") + (
            1.0 if "gamma" in variable.path else 0.0))
    x = tf.constant(rng.normal(loc=0.5, scale=1.5, size=(3, n, d)).astype("float32"))
    mask = tf.constant([[1] * n, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    upstream = tf.constant(rng.normal(size=(3, n, d)).astype("float32"))
    sources = [x] + block.trainable_variables
    results = []
    for fn in (lambda: block(x, padding_mask=mask), lambda: _block_equations(block, x, mask, causal)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn()
        results.append((out, tape.gradient(out, sources, upstream)))
    (got, got_grads), (want, want_grads) = results
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for variable, g, w in zip(["x"] + [v.path for v in block.trainable_variables], got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-4, err_msg=variable)
