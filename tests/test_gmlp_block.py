"""GMLPBlock against the paper's equations in NumPy, on both of its paths: the plain keras.ops
and (on the TensorFlow CPU backend) the fused kernels."""

import contextlib

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp import kernels
from keras_gmlp.layers import GMLPBlock
from weights import load_block


@pytest.fixture(autouse=True, params=["kernels", "plain"])
def path(request):
    """Runs each test on the layer's fast path (where `kernels.active()`) and its plain path."""
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
def test_matches_numpy_equations(rng, attention_dim, causal):
    block, p = make_block(rng, attention_dim, causal)
    x = rng.normal(size=(3, N, D)).astype("float32")
    mask = (np.arange(N)[None] < np.array([[N], [6], [2]])).astype("int32")
    expected = ref.gmlp_block(x, p, mask=mask, causal=causal, attention_dim=attention_dim)
    np.testing.assert_allclose(block(x, padding_mask=mask), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention_dim", [None, DIM], ids=["gmlp", "amlp"])
def test_padded_content_never_reaches_real_positions(rng, attention_dim):
    block, _ = make_block(rng, attention_dim)
    mask = np.array([[1] * 7 + [0] * 3, [1] * 4 + [0] * 6], "int32")
    x = rng.normal(size=(2, N, D)).astype("float32")
    changed = np.where(mask[..., None] == 1, x, 30 * rng.normal(size=x.shape)).astype("float32")
    real = mask.astype(bool)
    a = keras.ops.convert_to_numpy(block(x, padding_mask=mask))
    b = keras.ops.convert_to_numpy(block(changed, padding_mask=mask))
    np.testing.assert_array_equal(a[real], b[real])


def test_block_is_a_feed_forward_network_at_initialisation(rng):
    block = GMLPBlock(D, FFN, N)
    x = rng.normal(size=(2, N, D)).astype("float32")
    out = keras.ops.convert_to_numpy(block(x))
    # With W ~ 0 and b = 1 every token is processed independently: permuting tokens permutes outputs.
    perm = rng.permutation(N)
    np.testing.assert_allclose(block(x[:, perm]), out[:, perm], rtol=1e-4, atol=1e-5)


def test_stochastic_depth_drops_whole_examples(rng):
    block, _ = make_block(rng, drop_path_rate=0.5)
    x = rng.normal(size=(64, N, D)).astype("float32")
    out = keras.ops.convert_to_numpy(block(x, training=True))
    identity = np.all(out == x, axis=(1, 2))
    assert 10 < identity.sum() < 54
    # Kept examples are scaled by 1 / keep_prob, so the expectation is the inference output.
    inference = keras.ops.convert_to_numpy(block(x, training=False))
    kept = ~identity
    np.testing.assert_allclose(out[kept] - x[kept], 2 * (inference[kept] - x[kept]), rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="ffn_dim"):
        GMLPBlock(8, 15, 4)
    with pytest.raises(ValueError, match="drop_path_rate"):
        GMLPBlock(8, 16, 4, drop_path_rate=1.0)
    with pytest.raises(ValueError, match=r"expected 8 channels \(hidden_dim\)"):
        GMLPBlock(8, 16, 4)(np.zeros((1, 4, 6), "float32"))


def test_config_round_trip():
    block = GMLPBlock(8, 16, 4, tiny_attention_dim=4, dropout=0.1, drop_path_rate=0.2, causal=True)
    clone = GMLPBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert block.compute_output_shape((2, 4, 8)) == (2, 4, 8)
