import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp.layers import TinyAttention
from weights import load_tiny_attention

N, D, DIM, OUT = 10, 8, 6, 12


def make_attention(rng, causal=False):
    attention = TinyAttention(OUT, attention_dim=DIM, causal=causal)
    attention.build((None, N, D))
    p = ref.random_block_params(rng, D, 2 * OUT, N, attention_dim=DIM)
    load_tiny_attention(attention, p)
    return attention, p


@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy(rng, causal):
    attention, p = make_attention(rng, causal)
    x = rng.normal(size=(2, N, D)).astype("float32")
    mask = (np.arange(N)[None] < np.array([[N], [4]])).astype("int32")
    expected = ref.tiny_attention(x, p["wqkv"], p["bqkv"], p["wo"], p["bo"], DIM, mask, causal)
    np.testing.assert_allclose(attention(x, padding_mask=mask), expected, rtol=1e-4, atol=1e-5)


def test_padded_keys_get_no_attention(rng):
    attention, _ = make_attention(rng)
    mask = np.array([[1] * 6 + [0] * 4], "int32")
    x = rng.normal(size=(1, N, D)).astype("float32")
    changed = x.copy()
    changed[:, 6:] = rng.normal(size=(1, 4, D)) * 50
    a = keras.ops.convert_to_numpy(attention(x, padding_mask=mask))
    b = keras.ops.convert_to_numpy(attention(changed, padding_mask=mask))
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(attention(x)[:, :6], attention(changed)[:, :6])


def test_causal_ignores_later_tokens(rng):
    attention, _ = make_attention(rng, causal=True)
    x = rng.normal(size=(1, N, D)).astype("float32")
    changed = x.copy()
    changed[:, 5] += 1.0
    a, b = (keras.ops.convert_to_numpy(attention(t)) for t in (x, changed))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_config_round_trip_and_shape():
    layer = TinyAttention(12, attention_dim=4, causal=True)
    assert TinyAttention.from_config(layer.get_config()).get_config() == layer.get_config()
    assert layer.compute_output_shape((3, 7, 5)) == (3, 7, 12)
    with pytest.raises(ValueError, match=r"`attention_dim`=0: expected a positive int"):
        TinyAttention(12, attention_dim=0)
    with pytest.raises(ValueError, match=r"`output_dim`=True: expected a positive int"):
        TinyAttention(True)
