"""SpatialGatingUnit against the paper's equations in NumPy, on both of its paths: the plain
keras.ops and (on the TensorFlow CPU backend) the fused kernels."""

import contextlib

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp import kernels
from keras_gmlp.layers import SpatialGatingUnit
from weights import load_sgu


@pytest.fixture(autouse=True, params=["kernels", "plain"])
def path(request):
    """Runs each test on the layer's fast path (where `kernels.active()`) and its plain path."""
    with kernels.disabled() if request.param == "plain" else contextlib.nullcontext():
        yield request.param

N, FFN = 12, 16


def make_sgu(rng, causal=False, n=N):
    sgu = SpatialGatingUnit(n, causal=causal)
    sgu.build((None, n, FFN))
    p = ref.random_block_params(rng, 8, FFN, n)
    load_sgu(sgu, p)
    return sgu, p


def padding_mask(lengths, n=N):
    return (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype("int32")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_numpy_equations(rng, causal, masked):
    sgu, p = make_sgu(rng, causal)
    x = rng.normal(size=(3, N, FFN)).astype("float32")
    mask = padding_mask([N, 7, 3]) if masked else None
    expected = ref.spatial_gating_unit(
        x, p["w_spatial"], p["b_spatial"], p["gate_gamma"], p["gate_beta"], 1e-5,
        mask=mask, causal=causal,
    )
    got = keras.ops.convert_to_numpy(sgu(x, padding_mask=mask))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_attention_is_added_before_the_product(rng):
    sgu, p = make_sgu(rng)
    x = rng.normal(size=(2, N, FFN)).astype("float32")
    attention = rng.normal(size=(2, N, FFN // 2)).astype("float32")
    expected = ref.spatial_gating_unit(
        x, p["w_spatial"], p["b_spatial"], p["gate_gamma"], p["gate_beta"], attention=attention
    )
    np.testing.assert_allclose(sgu(x, attention=attention), expected, rtol=1e-4, atol=1e-5)


def test_at_initialisation_returns_u(rng):
    sgu = SpatialGatingUnit(N)
    x = rng.normal(size=(2, N, FFN)).astype("float32")
    out = keras.ops.convert_to_numpy(sgu(x))
    np.testing.assert_allclose(out, x[..., : FFN // 2], rtol=1e-4, atol=1e-5)
    assert not np.allclose(out, x[..., FFN // 2 :])


def test_padded_content_never_reaches_real_positions(rng):
    sgu, _ = make_sgu(rng)
    mask = padding_mask([5, 9])
    x = rng.normal(size=(2, N, FFN)).astype("float32")
    changed = np.where(mask[..., None] == 1, x, rng.normal(size=x.shape) * 100).astype("float32")
    real = mask.astype(bool)
    a = keras.ops.convert_to_numpy(sgu(x, padding_mask=mask))
    b = keras.ops.convert_to_numpy(sgu(changed, padding_mask=mask))
    np.testing.assert_array_equal(a[real], b[real])
    # Without the mask the padded content does leak: the test above can fail.
    assert not np.allclose(keras.ops.convert_to_numpy(sgu(x))[real],
                           keras.ops.convert_to_numpy(sgu(changed))[real])


def test_keras_mask_is_honoured_like_padding_mask(rng):
    sgu, _ = make_sgu(rng)
    ids = rng.integers(1, 50, size=(2, N))
    ids[0, 6:] = 0
    ids[1, 10:] = 0
    embedding = keras.layers.Embedding(50, FFN, mask_zero=True)
    x = embedding(ids)
    via_keras_mask = sgu(x, mask=embedding.compute_mask(ids))
    explicit = sgu(x, padding_mask=(ids != 0).astype("int32"))
    np.testing.assert_allclose(via_keras_mask, explicit, rtol=1e-6)
    inputs = keras.Input((N,), dtype="int32")
    model = keras.Model(inputs, sgu(embedding(inputs)))
    np.testing.assert_allclose(model(ids), explicit, rtol=1e-6)


def test_causal_output_ignores_later_tokens(rng):
    sgu, _ = make_sgu(rng, causal=True)
    x = rng.normal(size=(1, N, FFN)).astype("float32")
    j = 6
    changed = x.copy()
    changed[:, j] += rng.normal(size=FFN).astype("float32")
    a, b = (keras.ops.convert_to_numpy(sgu(t)) for t in (x, changed))
    np.testing.assert_array_equal(a[:, :j], b[:, :j])
    assert not np.allclose(a[:, j + 1 :], b[:, j + 1 :])


def test_shorter_input_uses_leading_block_of_weights(rng):
    sgu, p = make_sgu(rng)
    k = 7
    dedicated = SpatialGatingUnit(k)
    dedicated.build((None, k, FFN))
    load_sgu(dedicated, {**p, "w_spatial": p["w_spatial"][:k, :k], "b_spatial": p["b_spatial"][:k]})
    x = rng.normal(size=(2, k, FFN)).astype("float32")
    np.testing.assert_allclose(sgu(x), dedicated(x), rtol=1e-6, atol=1e-6)


def test_shorter_causal_input_equals_prefix_of_full_input(rng):
    sgu, _ = make_sgu(rng, causal=True)
    x = rng.normal(size=(2, N, FFN)).astype("float32")
    np.testing.assert_allclose(sgu(x[:, :5]), keras.ops.convert_to_numpy(sgu(x))[:, :5], rtol=1e-5, atol=1e-6)


def test_padding_equals_truncation(rng):
    sgu, _ = make_sgu(rng)
    x = rng.normal(size=(1, N, FFN)).astype("float32")
    padded = keras.ops.convert_to_numpy(sgu(x, padding_mask=padding_mask([5])))
    np.testing.assert_allclose(padded[:, :5], sgu(x[:, :5]), rtol=1e-5, atol=1e-6)


def test_too_long_input_raises_naming_both_lengths():
    sgu = SpatialGatingUnit(8)
    with pytest.raises(ValueError, match=r"input length`=9: expected at most sequence_length=8"):
        sgu(np.zeros((1, 9, 4), "float32"))


def test_odd_channels_raise():
    with pytest.raises(ValueError, match="even number of channels"):
        SpatialGatingUnit(8)(np.zeros((1, 8, 5), "float32"))


def test_bad_sequence_length_raises():
    with pytest.raises(ValueError, match=r"`sequence_length`=0: expected a positive int"):
        SpatialGatingUnit(0)
    with pytest.raises(ValueError, match=r"`layer_norm_epsilon`=-1: expected a finite float > 0"):
        SpatialGatingUnit(4, layer_norm_epsilon=-1)


def test_config_round_trip():
    sgu = SpatialGatingUnit(10, causal=True, layer_norm_epsilon=1e-3, name="sgu")
    clone = SpatialGatingUnit.from_config(sgu.get_config())
    assert clone.get_config() == sgu.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sgu))
    assert isinstance(revived, SpatialGatingUnit) and revived.causal
    assert keras.saving.get_registered_name(SpatialGatingUnit) == "keras_gmlp>SpatialGatingUnit"
    assert sgu.compute_output_shape((2, 10, 6)) == (2, 10, 3)



@pytest.mark.parametrize("activation", [None, "gelu"])
def test_a_pair_of_halves_matches_numpy_equations(rng, activation):
    # The block's form: u and v as two tensors (its two Dense layers), the GELU inside the unit.
    sgu = SpatialGatingUnit(N, causal=True, activation=activation)
    sgu.build([(None, N, FFN // 2)] * 2)
    p = ref.random_block_params(rng, 8, FFN, N)
    load_sgu(sgu, p)
    u, v = (rng.normal(size=(3, N, FFN // 2)).astype("float32") for _ in "uv")
    attention = rng.normal(size=(3, N, FFN // 2)).astype("float32")
    mask = padding_mask([N, 7, 3])
    x = np.concatenate([u, v], axis=-1)
    x = ref.gelu(x) if activation else x
    expected = ref.spatial_gating_unit(
        x, p["w_spatial"], p["b_spatial"], p["gate_gamma"], p["gate_beta"], 1e-5,
        mask=mask, causal=True, attention=attention,
    )
    got = keras.ops.convert_to_numpy(sgu([u, v], padding_mask=mask, attention=attention))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # One tensor of both halves is the same unit.
    np.testing.assert_allclose(sgu(np.concatenate([u, v], -1), padding_mask=mask, attention=attention),
                               got, rtol=1e-6, atol=1e-6)
    assert sgu.compute_output_shape([(3, N, FFN // 2)] * 2) == (3, N, FFN // 2)


def test_bad_pairs_and_activations_raise():
    with pytest.raises(ValueError, match=r"a pair \[u, v\] of the same shape"):
        SpatialGatingUnit(8)([np.zeros((1, 8, 4), "float32"), np.zeros((1, 8, 6), "float32")])
    with pytest.raises(ValueError, match=r"`activation`='relu': expected one of \(None, 'gelu'\)"):
        SpatialGatingUnit(8, activation="relu")
