"""ToeplitzProjection against a NumPy reference that builds the dense W[m, j] = t(m - j), on its
dense-matmul and FFT paths, and the rules it shares with the dense Spatial Gating Unit: near
identity at initialisation, padding that leaks nothing, a causal mode, inputs longer than any
seen before."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from keras_gmlp.layers import toeplitz
from keras_gmlp.layers.toeplitz import ToeplitzProjection

C = 6


def make_projection(rng, heads=1, causal=False, method="auto", decay=0.9, n=8):
    """A built projection with unit-scale random weights, and its NumPy t(k) and b."""
    layer = ToeplitzProjection(num_heads=heads, causal=causal, method=method, decay=decay,
                               relative_position_dim=8)
    layer.build((None, n, C))
    kernels, biases = [], []
    for i in range(3):
        kernel, bias = getattr(layer, f"rpe_kernel_{i}"), getattr(layer, f"rpe_bias_{i}")
        kernels.append(rng.normal(0, kernel.shape[0] ** -0.5, kernel.shape).astype("float32"))
        biases.append(rng.normal(0, 0.3, bias.shape).astype("float32"))
        kernel.assign(kernels[-1])
        bias.assign(biases[-1])
    b = rng.normal(1, 0.1, C).astype("float32")
    layer.bias.assign(b)
    return layer, ref.toeplitz_rpe_coefficient(kernels, biases, decay, heads, causal), b


def padding_mask(lengths, n):
    return (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype("int32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("method", ["dense", "fft"])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("causal, masked", [(False, False), (False, True), (True, True)])
def test_matches_numpy_dense_w(rng, method, heads, causal, masked):
    layer, t, b = make_projection(rng, heads, causal, method)
    n = 11
    v = rng.normal(size=(3, n, C)).astype("float32")
    mask = padding_mask([n, 6, 2], n) if masked else None
    expected = ref.toeplitz_projection(v, t, b, heads, mask=mask)
    np.testing.assert_allclose(numpy(layer(v, padding_mask=mask)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 17, 100])
@pytest.mark.parametrize("heads", [1, 2])
def test_fft_equals_dense_outputs_and_gradients(rng, n, heads):
    coefficients = tf.constant(rng.normal(size=(heads, 2 * n - 1)).astype("float32"))
    v = tf.constant(rng.normal(size=(2, n, 4)).astype("float32"))
    cotangent = rng.normal(size=(2, n, 4)).astype("float32")
    results = []
    for product in (toeplitz.toeplitz_dense, toeplitz.toeplitz_fft):
        with tf.GradientTape() as tape:
            tape.watch([coefficients, v])
            y = product(coefficients, v)
            loss = tf.reduce_sum(y * cotangent)
        results.append([y, *tape.gradient(loss, [coefficients, v])])
    for dense, fft in zip(*results):
        np.testing.assert_allclose(numpy(fft), numpy(dense), rtol=1e-4, atol=1e-4 * np.sqrt(n))


def test_fft_length_is_a_power_of_two_without_wrap_around():
    assert [toeplitz.fft_length(n) for n in (1, 2, 3, 4, 5, 512, 513)] == [1, 4, 8, 8, 16, 1024, 2048]


def test_auto_method_takes_the_fft_from_the_crossover():
    layer = ToeplitzProjection()
    crossover = toeplitz.FFT_CROSSOVER
    assert layer.resolved_method(crossover - 1) == "dense"
    assert layer.resolved_method(crossover) == "fft"
    assert ToeplitzProjection(method="dense").resolved_method(10 * crossover) == "dense"
    assert ToeplitzProjection(method="fft").resolved_method(2) == "fft"


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_at_initialisation_is_the_unit_gate(rng, method):
    layer = ToeplitzProjection(method=method)
    v = rng.normal(size=(2, 40, C)).astype("float32")
    out = numpy(layer(v))
    np.testing.assert_allclose(out, np.ones_like(out), atol=1e-3)
    # The mixing is near zero, not absent: its coefficients are random.
    assert np.std(numpy(layer.coefficients(40))) > 0


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_padded_content_never_reaches_real_positions(rng, method):
    layer, _, _ = make_projection(rng, heads=2, method=method)
    n = 12
    mask = padding_mask([5, 9], n)
    v = rng.normal(size=(2, n, C)).astype("float32")
    changed = np.where(mask[..., None] == 1, v, rng.normal(size=v.shape) * 100).astype("float32")
    real = mask.astype(bool)
    a, b = numpy(layer(v, padding_mask=mask)), numpy(layer(changed, padding_mask=mask))
    if method == "dense":
        np.testing.assert_array_equal(a[real], b[real])
    else:  # the FFT sums every frequency, zeros included: equal to rounding
        np.testing.assert_allclose(a[real], b[real], rtol=0, atol=1e-5)
    # Without the mask the padded content does leak: the test above can fail.
    assert not np.allclose(numpy(layer(v))[real], numpy(layer(changed))[real], atol=1e-2)


def test_keras_mask_is_honoured_like_padding_mask(rng):
    layer, _, _ = make_projection(rng)
    ids = rng.integers(1, 50, size=(2, 8))
    ids[0, 5:] = 0
    embedding = keras.layers.Embedding(50, C, mask_zero=True)
    x = embedding(ids)
    explicit = numpy(layer(x, padding_mask=(ids != 0).astype("int32")))
    np.testing.assert_allclose(numpy(layer(x, mask=embedding.compute_mask(ids))), explicit, rtol=1e-6)


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_causal_output_ignores_later_tokens(rng, method):
    layer, _, _ = make_projection(rng, causal=True, method=method)
    n, j = 16, 6
    v = rng.normal(size=(1, n, C)).astype("float32")
    changed = v.copy()
    changed[:, j] += 10 * rng.normal(size=C).astype("float32")
    a, b = numpy(layer(v)), numpy(layer(changed))
    np.testing.assert_allclose(a[:, :j], b[:, :j], rtol=0, atol=1e-5 if method == "fft" else 0)
    assert not np.allclose(a[:, j:], b[:, j:], atol=1e-3)
    # Not causal: the same change reaches the earlier outputs.
    bidirectional, _, _ = make_projection(rng, causal=False, method=method)
    assert not np.allclose(numpy(bidirectional(v))[:, :j], numpy(bidirectional(changed))[:, :j], atol=1e-3)


def test_causal_coefficients_of_negative_offsets_are_zero(rng):
    layer, _, _ = make_projection(rng, causal=True)
    t = numpy(layer.coefficients(9))  # offsets -8 ... 8
    assert np.all(t[:, :8] == 0) and np.all(t[:, 8:] != 0)


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_longer_input_than_built_uses_the_same_function(rng, method):
    layer, t, b = make_projection(rng, heads=2, method=method, n=8)
    v = rng.normal(size=(2, 64, C)).astype("float32")  # 8 times the built length
    np.testing.assert_allclose(numpy(layer(v)), ref.toeplitz_projection(v, t, b, 2), rtol=1e-4, atol=1e-4)
    # The coefficients of a short input are the central ones of a long input's.
    short, long = numpy(layer.coefficients(8)), numpy(layer.coefficients(64))
    np.testing.assert_array_equal(short, long[:, 64 - 8 : 64 + 7])


def test_bias_is_the_same_at_every_position_at_any_length(rng):
    layer = ToeplitzProjection(coefficient_initializer="zeros")
    layer.build((None, 8, C))
    b = rng.normal(size=C).astype("float32")
    layer.bias.assign(b)
    for n in (8, 50, 700):  # past the built length, on both paths
        out = numpy(layer(rng.normal(size=(1, n, C)).astype("float32")))
        np.testing.assert_allclose(out, np.broadcast_to(b, out.shape), rtol=1e-6, atol=1e-6)


def test_coefficients_stay_bounded_far_past_the_built_length(rng):
    layer, _, _ = make_projection(rng, decay=0.99, n=8)
    t = np.abs(numpy(layer.coefficients(4096)))
    assert np.all(np.isfinite(t)) and t[:, 4095 + 2000 :].max() < 1e-6 * t.max()


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_mixed_bfloat16_is_close_to_float32(rng, method):
    layer, _, _ = make_projection(rng, method=method)
    v = rng.normal(size=(2, 24, C)).astype("float32")
    expected = numpy(layer(v))
    mixed = ToeplitzProjection.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})
    mixed.build(v.shape)
    mixed.set_weights(layer.get_weights())
    out = mixed(v)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    np.testing.assert_allclose(numpy(keras.ops.cast(out, "float32")), expected, rtol=0,
                               atol=0.05 * np.abs(expected).max())


def test_config_round_trip(rng):
    layer, _, _ = make_projection(rng, heads=3, causal=True, method="fft")
    clone = ToeplitzProjection.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    v = rng.normal(size=(1, 9, C)).astype("float32")
    clone.build(v.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(numpy(clone(v)), numpy(layer(v)))
    assert keras.saving.get_registered_name(ToeplitzProjection) == "keras_gmlp>ToeplitzProjection"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, r"`num_heads`=0: expected a positive int"),
        ({"decay": 1.5}, r"`decay`=1.5: expected a float in \(0, 1\]"),
        ({"decay": 0}, r"`decay`=0: expected a float in \(0, 1\]"),
        ({"method": "conv"}, r"`method`='conv': expected one of \('auto', 'dense', 'fft'\)"),
        ({"relative_position_dim": 0}, r"`relative_position_dim`=0: expected a positive int"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToeplitzProjection(**kwargs)


def test_channels_not_divisible_by_heads_raise():
    with pytest.raises(ValueError, match="channels divisible by num_heads=4"):
        ToeplitzProjection(num_heads=4)(np.zeros((1, 3, 6), "float32"))


def test_token_axis_unknown_until_run_takes_the_dense_path(rng):
    layer, t, b = make_projection(rng, heads=2)
    any_length = tf.function(layer, input_signature=[tf.TensorSpec((None, None, C), "float32")])
    for n in (5, 13):
        v = rng.normal(size=(2, n, C)).astype("float32")
        np.testing.assert_allclose(numpy(any_length(v)), ref.toeplitz_projection(v, t, b, 2),
                                   rtol=1e-4, atol=1e-5)
    inputs = keras.Input((None, C))
    assert keras.Model(inputs, layer(inputs)).output_shape == (None, None, C)
