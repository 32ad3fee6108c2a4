"""One image preprocessing for evaluation, export and a user's own call: the data pipeline's
evaluation batches, the SavedModel's `predict_image_bytes` and `preprocess_batch` give the same
logits for the same files, and the export records the config it used."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_gmlp.data import image_preprocessing
from keras_gmlp.data import images
from keras_gmlp.export import export_model
from keras_gmlp.export import export_image_classifier
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPImageClassifierPreprocessor
from keras_gmlp.models import GMLPImageConverter
from keras_gmlp.models import GMLPVisionBackbone


def _model(image_shape):
    model = GMLPImageClassifier(GMLPVisionBackbone(image_shape, patch_size=4, num_layers=1, hidden_dim=8,
                                                   ffn_dim=16), num_classes=3)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return model


def _folder(root, rng):
    """Gray and colour PNG/JPEG files of several sizes and aspect ratios under root/test/LABEL."""
    files = []
    for label, name in enumerate(["a", "b"]):
        (root / "test" / name).mkdir(parents=True)
        for i, (h, w, c) in enumerate([(8, 8, 1), (13, 10, 3), (9, 16, 1), (30, 21, 3)]):
            pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
            data = tf.io.encode_png(pixels) if i % 2 == 0 else tf.io.encode_jpeg(pixels, quality=90)
            path = root / "test" / name / f"{i}.{'png' if i % 2 == 0 else 'jpg'}"
            tf.io.write_file(str(path), data)
            files.append(str(path))
    return sorted(files)  # the pipeline's order: labels sorted, then file names


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (8, 12, 3)])
def test_evaluation_export_and_own_call_agree_image_by_image(tmp_path, image_shape):
    files = _folder(tmp_path / "data", np.random.default_rng(1))
    model = _model(image_shape)
    # Defaults on every side: the pipeline's evaluation at the model's size and channels ...
    batches = images.image_dataset(str(tmp_path / "data"), "test", image_size=image_shape[:2],
                                   channels=image_shape[2], batch_size=16, training=False)
    evaluated = model.predict(batches, verbose=0)
    # ... the export's bytes signature ...
    path = export_model(model, tmp_path / "export")
    loaded = tf.saved_model.load(path)
    encoded = tf.constant([tf.io.read_file(f).numpy() for f in files])
    served = loaded.signatures["predict_image_bytes"](image_bytes=encoded)["logits"].numpy()
    # ... and a user's own call with the model's config.
    config = image_preprocessing.config_for_model(model)
    own = model.predict(image_preprocessing.preprocess_batch(encoded, config), verbose=0)
    assert evaluated.shape == (len(files), 3)
    np.testing.assert_allclose(served, evaluated, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(own, evaluated, rtol=1e-5, atol=1e-5)
    metadata = json.loads(loaded.get_metadata()["metadata"].numpy())
    assert metadata["image_preprocessing"] == config
    assert config["crop_fraction"] == 1.0  # small images are not cropped by default


def test_config_defaults_suit_the_resolution_and_bad_configs_name_the_key():
    assert image_preprocessing.preprocessing_config((28, 28, 1))["crop_fraction"] == 1.0
    assert image_preprocessing.preprocessing_config((224, 224, 3))["crop_fraction"] == 0.875
    config = image_preprocessing.preprocessing_config((32, 32, 3), crop_fraction=0.5)
    assert json.loads(json.dumps(config)) == image_preprocessing.check_config(config)
    with pytest.raises(ValueError, match=r"`preprocessing\['crop_fraction'\]`=1.5"):
        image_preprocessing.check_config(dict(config, crop_fraction=1.5))
    with pytest.raises(ValueError, match=r"`preprocessing\['channels'\]`=2"):
        image_preprocessing.check_config(dict(config, channels=2))
    with pytest.raises(ValueError, match="exactly the keys"):
        image_preprocessing.check_config(dict(config, extra=1))


def test_preprocessing_runs_in_a_tf_function_and_in_tf_data():
    config = image_preprocessing.preprocessing_config((4, 4, 3), crop_fraction=0.5)
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    eager = image_preprocessing.preprocess_image(pixels, config).numpy()
    # The central half of an 8x8 image at 4x4 is its middle 4x4 block, unresized.
    np.testing.assert_array_equal(eager, pixels[2:6, 2:6].astype(np.float32))
    traced = tf.function(lambda e: image_preprocessing.preprocess_encoded(e, config))(tf.io.encode_png(pixels))
    np.testing.assert_array_equal(traced.numpy(), eager)
    mapped = tf.data.Dataset.from_tensors(tf.io.encode_png(pixels)).map(
        lambda e: image_preprocessing.preprocess_encoded(e, config))
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), eager)


def test_classifier_predict_on_files_equals_an_export_that_took_the_converters_config(tmp_path):
    # A config other than the default at 32x32 (which does not crop): an export that ignored
    # the converter would serve other pixels than the model's predict.
    converter = GMLPImageConverter(image_size=(32, 32), crop_fraction=0.5)
    model = GMLPImageClassifier(
        GMLPVisionBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, hidden_dim=16,
                           ffn_dim=32),
        num_classes=3, preprocessor=GMLPImageClassifierPreprocessor(converter))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    files = [tf.io.encode_png(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).numpy(),
             tf.io.encode_jpeg(rng.integers(0, 256, (30, 64, 1), dtype=np.uint8)).numpy(),
             tf.io.encode_png(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)).numpy()]
    predicted = tf.nn.softmax(model.predict(files, verbose=0)).numpy()
    loaded = tf.saved_model.load(export_image_classifier(model, tmp_path / "export"))
    served = loaded.signatures["predict_image_bytes"](image_bytes=tf.constant(files))
    np.testing.assert_allclose(served["probabilities"].numpy(), predicted, rtol=1e-5, atol=1e-5)
    metadata = json.loads(loaded.get_metadata()["metadata"].numpy())
    assert metadata["image_preprocessing"] == converter.preprocessing_config
    # A config that differs from the converter's, explicit or by an override, is refused.
    with pytest.raises(ValueError, match=r"differs from the config of the model's preprocessor"):
        export_image_classifier(model, tmp_path / "other",
                                preprocessing=image_preprocessing.config_for_model(model))
    with pytest.raises(ValueError, match=r"with the crop/resize overrides.*differs"):
        export_image_classifier(model, tmp_path / "other", antialias=False)
    converter.image_size = (16, 16)
    with pytest.raises(ValueError, match=r"GMLPImageConverter config .*must match the model's"):
        export_image_classifier(model, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# keras-hub's Task.predict/fit map the preprocessor over tf.data on every backend, and an eager
# call returns the backend's tensors; TensorFlow's preprocess_batch in the same process is the truth.
_ON_BACKEND = """
import keras, numpy as np, tensorflow as tf
from keras_gmlp.data import image_preprocessing
from keras_gmlp.models import (GMLPImageClassifier, GMLPImageClassifierPreprocessor,
                               GMLPImageConverter, GMLPVisionBackbone)
rng = np.random.default_rng(0)
converter = GMLPImageConverter(image_size=(32, 32), crop_fraction=0.5)
model = GMLPImageClassifier(GMLPVisionBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1,
                                               hidden_dim=16, ffn_dim=32), 3,
                            preprocessor=GMLPImageClassifierPreprocessor(converter))
files = [tf.io.encode_png(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).numpy(),
         tf.io.encode_jpeg(rng.integers(0, 256, (24, 50, 1), dtype=np.uint8)).numpy()]
arrays = rng.integers(0, 256, (4, 45, 37, 1), dtype=np.uint8)
config = converter.preprocessing_config
eager = converter(arrays)
assert keras.ops.is_tensor(eager) and not isinstance(eager, tf.Tensor), type(eager)
np.testing.assert_array_equal(keras.ops.convert_to_numpy(eager),
                              image_preprocessing.preprocess_batch(arrays, config).numpy())
pixels = keras.ops.convert_to_tensor(image_preprocessing.preprocess_batch(files, config).numpy())
np.testing.assert_allclose(model.predict(files, verbose=0), keras.ops.convert_to_numpy(model(pixels)),
                           rtol=1e-5, atol=1e-5)
assert np.isfinite(model.fit(arrays, np.array([0, 1, 2, 1]), batch_size=2, verbose=0).history["loss"][0])
print("OK", keras.backend.backend())
"""


def test_image_converter_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-c", _ON_BACKEND], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "OK jax" in run.stdout, run.stdout + run.stderr[-3000:]
