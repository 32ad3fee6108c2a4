import keras
import numpy as np
import pytest

import keras_gmlp
import model_zoo
from keras_gmlp.models import GMLPImageClassifier


@pytest.mark.parametrize("model_type", model_zoo.MODEL_TYPES)
def test_keras_file_round_trip_gives_identical_outputs(model_type, rng, tmp_path):
    model = model_zoo.build(model_type)
    x = model_zoo.inputs(model_type, rng)
    before = keras.ops.convert_to_numpy(model(x))
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x)), before)
    assert restored.get_config() == model.get_config()
    assert model.get_config()["keras_gmlp_version"] == keras_gmlp.__version__


@pytest.mark.parametrize("model_type", model_zoo.MODEL_TYPES)
def test_get_config_round_trip(model_type):
    model = model_zoo.build(model_type)
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()


def test_compiled_model_round_trip_keeps_optimizer_state(rng, tmp_path):
    model = model_zoo.build("image_classifier")
    model.compile()
    x = model_zoo.inputs("image_classifier", rng)
    y = np.zeros(len(x), "int32")
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "compiled.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, GMLPImageClassifier)
    assert type(restored.optimizer) is type(model.optimizer)
    for saved, loaded in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded))
    # Same state, same data: one more step gives the same weights in both.
    model.fit(x, y, epochs=1, verbose=0)
    restored.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
