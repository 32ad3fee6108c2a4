"""The keras-hub preprocessors against keras_gmlp.data's pipelines (the trainers' truth)."""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.tests.test_case import TestCase

from keras_gmlp import data
from keras_gmlp.data import image_preprocessing
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPImageClassifierPreprocessor
from keras_gmlp.models import GMLPImageConverter
from keras_gmlp.models import GMLPMaskedLMPreprocessor
from keras_gmlp.models import GMLPTextClassifierPreprocessor
from keras_gmlp.models import GMLPTokenizer

LINES = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps", "Dogs and cats run fast.",
         "the fox sleeps and the dog runs over the quick cat again and again", "fast"]


def test_tokenizer_from_corpus_tokenizes_as_make_tokenizer():
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == list(data.RESERVED_TOKENS) and tokenizer.pad_token_id == 0
    import tensorflow as tf

    reference = data.make_tokenizer(vocabulary)
    lines = tf.data.Dataset.from_tensor_slices(LINES)
    want = [ids.numpy() for ids in lines.map(reference)]  # the pipelines' (TensorFlow) path
    got_graph = [ids.numpy() for ids in lines.map(tokenizer)]
    for line, w, g in zip(LINES, want, got_graph):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(np.asarray(tokenizer(line)), w)  # keras-hub's eager path


def test_classifier_preprocessor_matches_classification_dataset(tmp_path):
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{line}\t{i % 2}\n" for i, line in enumerate(LINES)))
    pipeline = data.classification_dataset(str(tsv), data.make_tokenizer(tokenizer.get_vocabulary()),
                                           sequence_length=6, batch_size=len(LINES), split="test")
    (want, labels), = list(pipeline)
    got, got_labels = GMLPTextClassifierPreprocessor(tokenizer, sequence_length=6)(LINES, labels)
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(np.asarray(got[key]), want[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(np.asarray(got_labels), labels.numpy())


def test_masked_lm_preprocessor_follows_berts_80_10_10_rule():
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    texts = [" ".join(LINES)] * 64
    preprocessor = GMLPMaskedLMPreprocessor(tokenizer, sequence_length=64, mask_selection_rate=0.5, seed=7)
    x, mask_ids, weights = (np.asarray(t) if not isinstance(t, dict) else {k: np.asarray(v) for k, v in t.items()}
                            for t in preprocessor(texts))
    original = np.asarray(GMLPTextClassifierPreprocessor(tokenizer, sequence_length=64)(texts)["token_ids"])
    rows = np.repeat(np.arange(len(texts))[:, None], mask_ids.shape[1], axis=1)
    chosen = weights > 0
    # Targets are the original tokens at the chosen positions; nothing else changed.
    np.testing.assert_array_equal(mask_ids[chosen], original[rows[chosen], x["mask_positions"][chosen]])
    untouched = np.ones_like(original, bool)
    untouched[rows[chosen], x["mask_positions"][chosen]] = False
    np.testing.assert_array_equal(x["token_ids"][untouched], original[untouched])
    # ceil(50% of the real tokens) are chosen, and 80% / 10% / 10% become [MASK] / random / kept.
    real = x["padding_mask"].sum(1)
    np.testing.assert_array_equal(chosen.sum(1), np.ceil(real * 0.5))
    replaced = x["token_ids"][rows[chosen], x["mask_positions"][chosen]]
    mask_share = np.mean(replaced == tokenizer.mask_token_id)
    kept_share = np.mean(replaced == mask_ids[chosen])
    assert abs(mask_share - 0.8) < 0.03 and 0.07 < kept_share < 0.16, (mask_share, kept_share)
    # A second call draws new masks (on the fly), unlike the data pipeline's fixed seeds.
    again = preprocessor(texts)[0]["mask_positions"]
    assert not np.array_equal(np.asarray(again), x["mask_positions"])


def _pixels(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_image_converter_is_preprocess_batch_on_arrays_and_file_bytes(rng):
    # 128x160 (>= 128 pixels: the default 0.875 centre crop happens), from non-square inputs of
    # another size and aspect ratio, gray and RGB, as arrays and as PNG/JPEG files.
    converter = GMLPImageConverter(image_size=(128, 160))
    config = converter.preprocessing_config
    assert config == image_preprocessing.preprocessing_config((128, 160, 3))
    assert config["crop_fraction"] == 0.875
    rgb, gray = _pixels(rng, (2, 150, 210, 3)), _pixels(rng, (2, 170, 140, 1))
    files = [tf.io.encode_png(rgb[0]).numpy(), tf.io.encode_jpeg(gray[0][..., 0:1]).numpy(),
             tf.io.encode_png(gray[1]).numpy(), tf.io.encode_jpeg(rgb[1], quality=90).numpy()]
    for inputs in (rgb, gray, gray.astype("float32"), files):
        want = image_preprocessing.preprocess_batch(inputs, config).numpy()
        np.testing.assert_array_equal(np.asarray(converter(inputs)), want)
        # Unbatched: one image, or one file's bytes.
        np.testing.assert_array_equal(np.asarray(converter(inputs[1])), want[1])
    assert np.asarray(converter(gray)).shape == (2, 128, 160, 3)
    # A list of images of different sizes: each image's preprocess_batch.
    mixed = [rgb[0], gray[1]]
    want = np.concatenate([image_preprocessing.preprocess_batch(x[None], config) for x in mixed])
    np.testing.assert_array_equal(np.asarray(converter(mixed)), want)
    np.testing.assert_array_equal(np.asarray(GMLPImageClassifierPreprocessor(converter)(mixed)), want)
    # In a tf.data map (keras-hub's Task.fit/predict) and through the classifier preprocessor.
    mapped = tf.data.Dataset.from_tensor_slices(files).batch(4).map(converter)
    want = image_preprocessing.preprocess_batch(files, config).numpy()
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), want)
    x, y = GMLPImageClassifierPreprocessor(converter)(files, [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(x), want)
    np.testing.assert_array_equal(np.asarray(y), [0, 1, 2, 3])


class ImageConverterHarness(TestCase):
    """keras-hub's preprocessing-layer harness: direct call, serialization, unbatched and batched
    tf.data maps and Grain give the same output, here `preprocess_batch`'s. On arrays only: the
    harness' Grain source decodes bytes as UTF-8 text (file bytes are tested above)."""

    def test_preprocessing_layer_harness(self):
        kwargs = {"image_size": (16, 12), "crop_fraction": 0.75, "resize_method": "area"}
        config = GMLPImageConverter(**kwargs).preprocessing_config
        arrays = _pixels(np.random.default_rng(1), (2, 25, 19, 1)).astype("float32")
        self.run_preprocessing_layer_test(
            cls=GMLPImageConverter, init_kwargs=kwargs, input_data=arrays,
            expected_output=image_preprocessing.preprocess_batch(arrays, config).numpy().tolist())


def test_image_converter_from_and_to_preprocessing_config():
    config = image_preprocessing.preprocessing_config((12, 16, 1), crop_fraction=0.5,
                                                      resize_method="area", antialias=False)
    converter = GMLPImageConverter.from_preprocessing_config(config)
    assert converter.preprocessing_config == config
    assert (converter.image_size, converter.channels) == ((12, 16), 1)
    # crop_fraction=None follows image_size, also when keras-hub sets image_size later.
    resizable = GMLPImageConverter(channels=1)
    resizable.image_size = (256, 256)
    assert resizable.preprocessing_config["crop_fraction"] == 0.875
    resizable.image_size = (32, 32)
    assert resizable.preprocessing_config["crop_fraction"] == 1.0
    restored = GMLPImageConverter.from_config(converter.get_config())
    assert restored.get_config() == converter.get_config()
    assert restored.preprocessing_config == config
    # NumPy arguments (e.g. read from a backbone) become plain values: the config is JSON.
    numpy_args = GMLPImageConverter(image_size=tuple(np.array([12, 16])),
                                    channels=np.int64(1), crop_fraction=np.float32(0.5))
    assert json.loads(json.dumps(numpy_args.get_config()))["channels"] == 1
    # The registered name round trip (what a preset's image_converter.json holds).
    serialized = keras.saving.serialize_keras_object(converter)
    assert serialized["registered_name"] == "keras_gmlp>GMLPImageConverter"
    assert keras.saving.deserialize_keras_object(serialized).preprocessing_config == config


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": 1 / 255}, r"`scale`=0.0039.*: expected None: GMLPVisionBackbone rescales"),
    ({"offset": -1.0}, r"`offset`=-1.0: expected None"),
    ({"channels": 4}, r"`channels`=4: expected 1 or 3"),
    ({"crop_fraction": 1.5}, r"`crop_fraction`=1.5: expected a float in \(0, 1\]"),
    ({"resize_method": "cubic"}, r"`resize_method`='cubic': expected one of"),
    ({"antialias": "yes"}, r"`antialias`='yes': expected True or False"),
    ({"image_size": (0, 8)}, r"`image_size`=\[0, 8\]: expected \[height, width\] of positive ints"),
    ({"image_size": 8}, r"`image_size`=8: expected \(height, width\)"),
    ({"interpolation": "nearest"}, r"`interpolation`='nearest'.*use `resize_method`"),
    ({"crop_to_aspect_ratio": False}, r"`crop_to_aspect_ratio`=False.*use `crop_fraction`"),
    ({"data_format": "channels_first"}, r"`data_format`='channels_first': expected None or"),
    ({"no_such_argument": 1}, r"no_such_argument"),
])
def test_image_converter_rejects_bad_arguments_naming_them(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GMLPImageConverter(**{"image_size": (8, 8), **kwargs})


def test_image_converter_rejects_bad_inputs_naming_them():
    with pytest.raises(ValueError, match=r"`image_size`=None: expected \(height, width\) set"):
        GMLPImageConverter()(np.zeros((1, 8, 8, 3)))
    converter = GMLPImageConverter(image_size=(8, 8))
    with pytest.raises(ValueError, match=r"`inputs`='an array of shape \(8, 8\)'"):
        converter(np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"`inputs`='a string tensor of shape \(1, 1\)'"):
        converter(np.array([[b"x"]]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        converter([b"not an image"])


def _tiny_image_classifier(converter):
    from keras_gmlp.models import GMLPVisionBackbone

    backbone = GMLPVisionBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, hidden_dim=16,
                                  ffn_dim=32)
    model = GMLPImageClassifier(backbone, num_classes=3,
                                preprocessor=GMLPImageClassifierPreprocessor(converter))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return model


def test_image_classifier_preset_keeps_its_converter(tmp_path, rng):
    converter = GMLPImageConverter(image_size=(32, 32), crop_fraction=0.5, resize_method="bicubic")
    model = _tiny_image_classifier(converter)
    files = [tf.io.encode_png(_pixels(rng, (40, 30, 3))).numpy(),
             tf.io.encode_jpeg(_pixels(rng, (24, 50, 1))).numpy()]
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    loaded_converter = keras_hub.layers.ImageConverter.from_preset(preset)
    assert type(loaded_converter) is GMLPImageConverter
    assert loaded_converter.get_config() == converter.get_config()
    preprocessor = keras_hub.models.ImageClassifierPreprocessor.from_preset(preset)
    assert type(preprocessor) is GMLPImageClassifierPreprocessor
    assert preprocessor.image_converter.preprocessing_config == converter.preprocessing_config
    restored = keras_hub.models.ImageClassifier.from_preset(preset)
    assert type(restored) is GMLPImageClassifier
    assert restored.preprocessor.image_converter.preprocessing_config == converter.preprocessing_config
    # The model called on the pixels (a Task's __call__ skips its preprocessor; predict runs it).
    want = keras.ops.convert_to_numpy(
        model(image_preprocessing.preprocess_batch(files, converter.preprocessing_config)))
    np.testing.assert_allclose(model.predict(files, verbose=0), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(restored.predict(files, verbose=0), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task", ["text_classifier", "masked_lm"])
def test_a_tokenizer_larger_than_the_backbone_vocabulary_is_rejected(task):
    from keras_gmlp.models import GMLPBackbone
    from keras_gmlp.models import GMLPMaskedLM
    from keras_gmlp.models import GMLPTextClassifier

    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=40)
    size = tokenizer.vocabulary_size()
    preprocessor_cls = GMLPTextClassifierPreprocessor if task == "text_classifier" else GMLPMaskedLMPreprocessor
    preprocessor = preprocessor_cls(tokenizer, sequence_length=8)

    def build(vocabulary_size):
        backbone = GMLPBackbone(vocabulary_size=vocabulary_size, num_layers=1, hidden_dim=8,
                                ffn_dim=16, sequence_length=8)
        if task == "text_classifier":
            return GMLPTextClassifier(backbone, 2, preprocessor=preprocessor)
        return GMLPMaskedLM(backbone, preprocessor=preprocessor)

    # Ids up to size - 1 reach the embedding: a backbone of `size - 1` rows would read past it.
    with pytest.raises(ValueError, match=rf"vocabulary_size\(\)`={size}: expected at most the "
                                         rf"backbone's vocabulary_size={size - 1}"):
        build(size - 1)
    model = build(size)  # exactly the tokenizer's ids
    x = model.preprocessor(LINES)
    ids = (x[0] if isinstance(x, tuple) else x)["token_ids"]
    assert int(np.max(ids)) < size
    assert build(size + 10).backbone.vocabulary_size == size + 10  # spare rows are harmless
