"""The hand-written gradients of gelu_exact and FastLayerNormalization equal autodiff of the
reference formulas, and their forward passes equal Keras' layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from keras_gmlp.layers.gelu import gelu_exact
from keras_gmlp.layers.layer_norm import FastLayerNormalization


def test_gelu_forward_and_gradient_match_autodiff_of_the_erf_formula(rng):
    x = tf.constant(rng.normal(scale=3.0, size=(4, 7, 16)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(4, 7, 16)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        fast = gelu_exact(x)
        reference = keras.activations.gelu(x, approximate=False)
    np.testing.assert_allclose(fast, ref.gelu(x.numpy()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(fast, x, upstream), tape.gradient(reference, x, upstream), rtol=1e-5, atol=1e-6
    )


def test_gelu_keeps_bfloat16_dtype():
    x = tf.constant([[-1.0, 0.5, 2.0]], tf.bfloat16)
    out = gelu_exact(x)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out, tf.float32), ref.gelu(np.array([[-1.0, 0.5, 2.0]])), rtol=1e-2)


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
