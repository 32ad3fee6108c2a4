"""GMLPBlock against the paper's equations in NumPy, on both of its paths: the plain keras.ops
and (on the TensorFlow CPU backend) the fused kernels."""

import contextlib
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp import kernels
from keras_gmlp.layers import GMLPBlock
from weights import load_block


@pytest.fixture(params=["kernels", "plain"])
def path(request):
    """Runs a test on the layer's fast path (where `kernels.active()`) and its plain path."""
    with kernels.disabled() if request.param == "plain" else contextlib.nullcontext():
        yield request.param

N, D, FFN, DIM = 10, 8, 16, 4


def make_block(rng, attention_dim=None, causal=False, **kwargs):
    block = GMLPBlock(D, FFN, N, tiny_attention_dim=attention_dim, causal=causal, **kwargs)
    block.build((None, N, D))
    p = ref.random_block_params(rng, D, FFN, N, attention_dim)
    load_block(block, p)
    return block, p


@pytest.mark.parametrize("attention_dim", [None, DIM], ids=["gmlp", "amlp"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy_equations(path, rng, attention_dim, causal):
    block, p = make_block(rng, attention_dim, causal)
    x = rng.normal(size=(3, N, D)).astype("float32")
    mask = (np.arange(N)[None] < np.array([[N], [6], [2]])).astype("int32")
    expected = ref.gmlp_block(x, p, mask=mask, causal=causal, attention_dim=attention_dim)
    np.testing.assert_allclose(block(x, padding_mask=mask), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention_dim", [None, DIM], ids=["gmlp", "amlp"])
def test_padded_content_never_reaches_real_positions(path, rng, attention_dim):
    block, _ = make_block(rng, attention_dim)
    mask = np.array([[1] * 7 + [0] * 3, [1] * 4 + [0] * 6], "int32")
    x = rng.normal(size=(2, N, D)).astype("float32")
    changed = np.where(mask[..., None] == 1, x, 30 * rng.normal(size=x.shape)).astype("float32")
    real = mask.astype(bool)
    a = keras.ops.convert_to_numpy(block(x, padding_mask=mask))
    b = keras.ops.convert_to_numpy(block(changed, padding_mask=mask))
    np.testing.assert_array_equal(a[real], b[real])


def test_block_is_a_feed_forward_network_at_initialisation(path, rng):
    block = GMLPBlock(D, FFN, N)
    x = rng.normal(size=(2, N, D)).astype("float32")
    out = keras.ops.convert_to_numpy(block(x))
    # With W ~ 0 and b = 1 every token is processed independently: permuting tokens permutes outputs.
    perm = rng.permutation(N)
    np.testing.assert_allclose(block(x[:, perm]), out[:, perm], rtol=1e-4, atol=1e-5)


def test_stochastic_depth_drops_whole_examples(path, rng):
    block, _ = make_block(rng, drop_path_rate=0.5)
    x = rng.normal(size=(64, N, D)).astype("float32")
    out = keras.ops.convert_to_numpy(block(x, training=True))
    identity = np.all(out == x, axis=(1, 2))
    assert 10 < identity.sum() < 54
    # Kept examples are scaled by 1 / keep_prob, so the expectation is the inference output.
    inference = keras.ops.convert_to_numpy(block(x, training=False))
    kept = ~identity
    np.testing.assert_allclose(out[kept] - x[kept], 2 * (inference[kept] - x[kept]), rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise_naming_argument_value_and_expectation():
    with pytest.raises(ValueError, match=r"`ffn_dim`=15: expected an even int"):
        GMLPBlock(8, 15, 4)
    with pytest.raises(ValueError, match=r"`drop_path_rate`=1.0: expected a float in \[0, 1\)"):
        GMLPBlock(8, 16, 4, drop_path_rate=1.0)
    with pytest.raises(ValueError, match=r"`hidden_dim`=0: expected a positive int"):
        GMLPBlock(0, 16, 4)
    with pytest.raises(ValueError, match=r"`tiny_attention_dim`=0: expected a positive int"):
        GMLPBlock(8, 16, 4, tiny_attention_dim=0)
    with pytest.raises(ValueError, match=r"`gate_norm_epsilon`=0: expected a finite float > 0"):
        GMLPBlock(8, 16, 4, gate_norm_epsilon=0)
    with pytest.raises(ValueError, match=r"expected 8 channels \(hidden_dim\)"):
        GMLPBlock(8, 16, 4)(np.zeros((1, 4, 6), "float32"))


def test_config_round_trip():
    block = GMLPBlock(8, 16, 4, tiny_attention_dim=4, dropout=0.1, drop_path_rate=0.2, causal=True)
    clone = GMLPBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert block.compute_output_shape((2, 4, 8)) == (2, 4, 8)


JAX_GRADIENT = """
import sys
import jax
import keras
import numpy as np
from keras_gmlp.layers import GMLPBlock
from weights import load_block

data = dict(np.load(sys.argv[1]))
p = {k[2:]: v for k, v in data.items() if k.startswith("p_")}
block = GMLPBlock(8, 16, 10, tiny_attention_dim=4, causal=True)
block.build((None, 10, 8))
load_block(block, p)

def loss(trainable, x):
    out, _ = block.stateless_call(trainable, block.non_trainable_variables, x, padding_mask=data["mask"])
    return (out * data["upstream"]).sum(), out

(_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    [v.value for v in block.trainable_variables], data["x"])
np.savez(sys.argv[2], out=out, d_x=grads[1], **{v.path: g for v, g in zip(block.trainable_variables, grads[0])})
"""


def test_jax_backend_values_and_gradients_match_tensorflow(rng, tmp_path):
    # The plain path is what JAX runs (jax.grad through it, no custom gradients); TensorFlow's
    # run of the same weights, on the kernels, is the independent truth.
    import tensorflow as tf

    block, p = make_block(rng, DIM, causal=True)
    x = rng.normal(size=(3, N, D)).astype("float32")
    mask = (np.arange(N)[None] < np.array([[N], [6], [2]])).astype("int32")
    upstream = rng.normal(size=(3, N, D)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x, mask=mask, upstream=upstream, **{f"p_{k}": v for k, v in p.items()})
    tests_dir = pathlib.Path(__file__).parent
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([str(tests_dir.parent), str(tests_dir)]))
    subprocess.run([sys.executable, "-c", JAX_GRADIENT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   env=env, check=True, timeout=300)
    jax_result = np.load(tmp_path / "out.npz")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = block(xt, padding_mask=mask)
        loss = tf.reduce_sum(out * upstream)
    grads = tape.gradient(loss, [xt] + block.trainable_variables)
    np.testing.assert_allclose(jax_result["out"], out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax_result["d_x"], grads[0], rtol=1e-4, atol=1e-4)
    for variable, grad in zip(block.trainable_variables, grads[1:]):
        np.testing.assert_allclose(jax_result[variable.path], grad, rtol=1e-4, atol=1e-4, err_msg=variable.path)


def test_u_and_v_kernels_are_the_column_halves_of_one_draw_of_the_initializer():
    # One (hidden, ffn) draw split in two, as the single projection before the split was: a
    # seeded run initialises exactly as before (the README's quick-start numbers).
    initializer = keras.initializers.GlorotUniform(seed=3)
    full = keras.ops.convert_to_numpy(initializer((8, 12)))
    block = GMLPBlock(8, 12, 4, kernel_initializer=keras.initializers.GlorotUniform(seed=3))
    block.build((2, 4, 8))
    u = keras.ops.convert_to_numpy(block.channel_projection_u.kernel)
    v = keras.ops.convert_to_numpy(block.channel_projection_v.kernel)
    np.testing.assert_array_equal(np.concatenate([u, v], axis=1), full)
