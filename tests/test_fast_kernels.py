"""Each fused kernel (keras_gmlp.kernels) against the plain path of the layer it speeds up,
values and gradients, float32 and mixed_bfloat16; and the one branch that selects them.

The plain path is itself checked against the paper's equations in NumPy
(tests/numpy_reference.py, in test_spatial_gating_unit.py and test_gmlp_block.py), so a kernel
that equals it computes the paper's math.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gmlp import kernels
from keras_gmlp.layers import GMLPBlock
from keras_gmlp.kernels import normalization as layer_norm_module
from keras_gmlp.layers import SpatialGatingUnit

POLICIES = ["float32", "mixed_bfloat16"]


def _spread_weights(layer, rng):
    # Weights far from their initialisation (W near zero, gains at one), so every term of the
    # math carries value and gradient.
    for variable in layer.trainable_variables:
        scale = 0.5 if len(variable.shape) == 2 else 0.3
        offset = 1.0 if "gamma" in variable.path else 0.0
        variable.assign(rng.normal(offset, scale, variable.shape).astype("float32"))


def _values_and_gradients(fn, layer, inputs, upstream):
    """`fn(*inputs)` and its gradients for `inputs` and `layer`'s weights, traced in one graph
    (the kernels switch is read at trace time)."""

    @tf.function
    def step(*inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = tf.cast(fn(*inputs), tf.float32)
            loss = tf.reduce_sum(out * upstream)
        return [out] + tape.gradient(loss, list(inputs) + layer.trainable_variables)

    return [t.numpy() for t in step(*inputs)]


def _both_paths(fn, layer, inputs, upstream):
    fast = _values_and_gradients(fn, layer, inputs, upstream)
    with kernels.disabled():
        plain = _values_and_gradients(fn, layer, inputs, upstream)
    return fast, plain


def _assert_same(fast, plain, names, policy):
    assert len(fast) == len(plain) == len(names)
    for name, got, want in zip(names, fast, plain):
        if policy == "float32":
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)
        else:
            # The kernels compute GELU, LayerNorm and the gate in float32; the plain path rounds
            # each op's result to bfloat16 (8 bits of mantissa, about 0.4% per rounding).
            error = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert error < 2e-2, f"{name}: relative error {error:.3g}"


def test_kernels_are_active_on_the_tensorflow_cpu_backend_and_off_inside_disabled():
    assert kernels.active()
    with kernels.disabled():
        assert not kernels.active()
        with kernels.disabled():
            assert not kernels.active()
        assert not kernels.active()
    assert kernels.active()


@pytest.mark.parametrize("policy", POLICIES)
def test_layer_norm_kernel_matches_keras_layer_normalization(rng, policy):
    layer = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
    layer.build((None, 7, 16))
    _spread_weights(layer, rng)
    x = tf.constant(rng.normal(2.0, 3.0, (3, 7, 16)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(3, 7, 16)).astype("float32"))
    compute = layer.compute_dtype

    def fast(x):
        return kernels.layer_norm(tf.cast(x, compute), layer.gamma, layer.beta, layer.epsilon)

    got = _values_and_gradients(fast, layer, [x], upstream)
    want = _values_and_gradients(layer, layer, [x], upstream)
    _assert_same(got, want, ["out", "x", "gamma", "beta"], policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_fast_layer_normalization_runs_the_kernel_and_falls_back_for_other_axes(rng, policy, monkeypatch):
    calls = []
    kernel = layer_norm_module.layer_norm
    monkeypatch.setattr(layer_norm_module, "layer_norm", lambda *a: calls.append(1) or kernel(*a))
    fast, plain = (cls(epsilon=1e-5, dtype=policy) for cls in
                   (kernels.FastLayerNormalization, keras.layers.LayerNormalization))
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    fast.build(x.shape)
    plain.build(x.shape)
    _spread_weights(fast, rng)
    plain.set_weights(fast.get_weights())
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    got = _values_and_gradients(fast, fast, [tf.constant(x)], upstream)
    want = _values_and_gradients(plain, plain, [tf.constant(x)], upstream)
    _assert_same(got, want, ["out", "x", "gamma", "beta"], policy)
    assert len(calls) == 1
    other_axis = kernels.FastLayerNormalization(axis=1)
    np.testing.assert_allclose(other_axis(x), keras.layers.LayerNormalization(axis=1)(x), rtol=1e-6)
    assert len(calls) == 1
    assert kernels.FastLayerNormalization.from_config(other_axis.get_config()).axis == other_axis.axis


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("optional,causal", [("none", False), ("mask", True), ("mask+attention", False)])
def test_spatial_gating_unit_kernels_match_the_plain_path(rng, policy, causal, optional):
    batch, n, channels = 3, 8, 12
    sgu = SpatialGatingUnit(n, causal=causal, dtype=policy)
    sgu.build((None, n, 2 * channels))
    _spread_weights(sgu, rng)
    x = tf.constant(rng.normal(1.0, 2.0, (batch, n, 2 * channels)).astype("float32"))
    attention = tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
    mask = tf.constant([[1] * n, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    upstream = tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
    if optional == "none":
        fn, inputs = (lambda x: sgu(x)), [x]
    elif optional == "mask":
        fn, inputs = (lambda x: sgu(x, padding_mask=mask)), [x]
    else:
        fn, inputs = (lambda x, a: sgu(x, padding_mask=mask, attention=a)), [x, attention]
    fast, plain = _both_paths(fn, sgu, inputs, upstream)
    names = ["out", "x"] + (["attention"] if len(inputs) == 2 else []) + [v.path for v in sgu.trainable_variables]
    _assert_same(fast, plain, names, policy)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("attention_dim,causal", [(None, False), (4, True)], ids=["gmlp", "amlp-causal"])
def test_gmlp_block_kernels_match_the_plain_path(rng, policy, attention_dim, causal):
    batch, n, d, ffn = 3, 9, 8, 24
    block = GMLPBlock(d, ffn, n, tiny_attention_dim=attention_dim, causal=causal, dtype=policy)
    block.build((None, n, d))
    _spread_weights(block, rng)
    x = tf.constant(rng.normal(0.5, 1.5, (batch, n, d)).astype("float32"))
    mask = tf.constant([[1] * n, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    upstream = tf.constant(rng.normal(size=(batch, n, d)).astype("float32"))
    fast, plain = _both_paths(lambda x: block(x, padding_mask=mask), block, [x], upstream)
    _assert_same(fast, plain, ["out", "x"] + [v.path for v in block.trainable_variables], policy)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("causal,activation", [(False, None), (True, "gelu")])
def test_spatial_gating_unit_kernels_match_the_plain_path_on_a_pair(rng, policy, causal, activation):
    # The block's form: `[u, v]` pre-activations from two Dense layers, the GELU inside the unit.
    batch, n, channels = 3, 8, 12
    sgu = SpatialGatingUnit(n, causal=causal, activation=activation, dtype=policy)
    sgu.build([(None, n, channels)] * 2)
    _spread_weights(sgu, rng)
    u, v = (tf.constant(rng.normal(0.5, 1.5, (batch, n, channels)).astype("float32")) for _ in "uv")
    attention = tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
    mask = tf.constant([[1] * n, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    upstream = tf.constant(rng.normal(size=(batch, n, channels)).astype("float32"))
    fn = lambda u, v, a: sgu([u, v], padding_mask=mask, attention=a)  # noqa: E731
    fast, plain = _both_paths(fn, sgu, [u, v, attention], upstream)
    _assert_same(fast, plain, ["out", "u", "v", "attention"] + [v.path for v in sgu.trainable_variables], policy)


def _lora_block(rng, policy="float32"):
    block = GMLPBlock(8, 16, 6, dtype=policy)
    block.build((None, 6, 8))
    _spread_weights(block, rng)
    for dense in (block.channel_projection_u, block.channel_projection_v, block.channel_projection_out):
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(rng.normal(size=dense.lora_kernel_b.shape).astype("float32"))
    return block


def test_the_kernels_are_chosen_inside_the_leaf_layers(rng, monkeypatch):
    # The block has no fast path of its own: its LayerNorm and SGU take their kernels, and its
    # Dense layers always run as Keras layers.
    calls = []
    for name in ("spatial_gating", "layer_norm"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, kernel=kernel, name=name, **k: calls.append(name) or kernel(*a, **k))
    from keras_gmlp.kernels import normalization

    norm_kernel = normalization.layer_norm
    monkeypatch.setattr(normalization, "layer_norm", lambda *a: calls.append("layer_norm") or norm_kernel(*a))
    block = GMLPBlock(8, 16, 6)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    expected = block(x)
    assert sorted(calls) == ["layer_norm", "spatial_gating"]
    with kernels.disabled():
        np.testing.assert_allclose(block(x), expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2


@pytest.mark.parametrize("policy", POLICIES)
def test_lora_acts_on_the_fast_path_and_matches_the_plain_path(rng, policy):
    # Before the split, a LoRA-enabled projection sent the block to its plain path; now the
    # Dense layers are called on both paths, so LoRA's low-rank update is in both, with its
    # gradients (the LoRA weights are the trainable ones).
    block = _lora_block(rng, policy)
    x = tf.constant(rng.normal(size=(2, 6, 8)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(2, 6, 8)).astype("float32"))
    fast, plain = _both_paths(lambda x: block(x), block, [x], upstream)
    names = ["out", "x"] + [v.path for v in block.trainable_variables]
    assert any("lora_kernel_a" in name for name in names)
    _assert_same(fast, plain, names, policy)
    for dense in (block.channel_projection_u, block.channel_projection_v, block.channel_projection_out):
        dense.lora_kernel_b.assign(tf.zeros_like(dense.lora_kernel_b))
    without = block(x).numpy()
    assert not np.allclose(fast[0], without, atol=1e-3)


def test_int8_quantized_block_runs_its_kernels_and_matches_the_plain_path(rng):
    block = GMLPBlock(8, 16, 6)
    block.build((None, 6, 8))
    _spread_weights(block, rng)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    float_out = block(x).numpy()
    for dense in (block.channel_projection_u, block.channel_projection_v, block.channel_projection_out):
        dense.quantize("int8")  # what Model.quantize does to every Dense layer
    quantized = block(x).numpy()
    with kernels.disabled():
        np.testing.assert_allclose(block(x), quantized, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(quantized, float_out)  # int8 weights, not the float kernel
    np.testing.assert_allclose(quantized, float_out, atol=0.1 * np.abs(float_out).max())
