"""SavedModel export of `GMLPImageClassifier`: float-pixel and encoded-bytes signatures."""

import tensorflow as tf

from keras_gmlp.data import image_preprocessing
from keras_gmlp.export.common import LABELS_FILENAME
from keras_gmlp.export.common import ServingModule
from keras_gmlp.export.common import after
from keras_gmlp.export.common import check_top_k
from keras_gmlp.export.common import classification_outputs
from keras_gmlp.export.common import input_spec
from keras_gmlp.export.common import label_names_for
from keras_gmlp.export.common import model_metadata
from keras_gmlp.export.common import require
from keras_gmlp.export.common import require_shape
from keras_gmlp.export.common import save_versioned
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPImageConverter

BYTES_SIGNATURE = "predict_image_bytes"


class _ImageClassifierModule(ServingModule):
    def __init__(self, model, label_names, top_k, preprocessing, metadata, asset_dir):
        super().__init__(model, metadata, asset_dir)
        self._preprocessing = preprocessing
        self._image_shape = tuple(model.backbone.image_shape)
        self._top_k = min(top_k, model.num_classes)
        self.labels_file = self.write_asset(
            LABELS_FILENAME, label_names_for(model.num_classes, label_names)
        )
        self.labels_table = self.lookup_table(self.labels_file)
        self.serve_images = tf.function(
            self._serve_images, input_signature=[input_spec(tf.float32, "images")]
        )
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes, input_signature=[input_spec(tf.string, "image_bytes")]
        )

    def _classify(self, images):
        logits = self.call_model(images)
        return classification_outputs(logits, self._top_k, self.labels_table)

    def _serve_images(self, images):
        height, width, channels = self._image_shape
        expected = f"(batch, {height}, {width}, {channels}) float32 pixels"
        images = after([require_shape(images, "images", (None, height, width, channels),
                                      expected)], images)
        non_finite = tf.math.count_nonzero(~tf.math.is_finite(images))
        images = after([require(
            tf.equal(non_finite, 0),
            "`images` has {} NaN or infinite values: expected finite pixels in [0, 255].",
            non_finite,
        )], images)
        return self._classify(tf.ensure_shape(images, (None, *self._image_shape)))

    def _decode(self, encoded):
        # decode_image raises InvalidArgumentError ("Unknown image file format...", "Invalid
        # PNG data...") for bytes it cannot read; the request fails, the server keeps running.
        # Pixels stay in [0, 255]: the model rescales internally, as in training.
        image = image_preprocessing.preprocess_encoded(encoded, self._preprocessing)
        return tf.ensure_shape(image, self._image_shape)

    def _serve_image_bytes(self, image_bytes):
        image_bytes = after([require_shape(image_bytes, "image_bytes", (None,),
                                           "(batch,) encoded images")], image_bytes)
        image_bytes = tf.ensure_shape(image_bytes, [None])
        images = tf.map_fn(
            self._decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec(self._image_shape, tf.float32),
        )
        return self._classify(images)


def _converter_config(model):
    """The preprocessing config of `model`'s `GMLPImageConverter`, or None without one."""
    converter = getattr(getattr(model, "preprocessor", None), "image_converter", None)
    if not isinstance(converter, GMLPImageConverter) or converter.image_size is None:
        return None
    return converter.preprocessing_config


def export_image_classifier(model, export_base, *, label_names=None, top_k=5, version=None,
                            preprocessing=None, center_crop_fraction=None, resize_method=None,
                            antialias=None):
    """Exports a `GMLPImageClassifier` as a TF Serving SavedModel under `export_base/<version>/`.

    Signatures (same outputs):
        serving_default: `images` float32 `(batch, height, width, channels)`
            at the model's `image_shape`, pixels in [0, 255].
        predict_image_bytes: `image_bytes` `(batch,)` string, each a JPEG,
            PNG, GIF or BMP file (any size; first frame of a GIF), decoded to
            the model's input by `keras_gmlp.data.image_preprocessing` with
            `preprocessing` (decode to the model's channels, central crop,
            resize, clip to [0, 255]; the model rescales pixels itself), the
            function and config that keras_gmlp.data.images evaluates with.
            Undecodable bytes fail the request with InvalidArgumentError.
        Inputs are declared by dtype only; each signature checks them before
        the model runs and fails the request with InvalidArgumentError
        ("assertion failed: [`images` of shape [8 8]: expected (batch, 8, 8,
        1) float32 pixels.]") for another rank or shape, NaN or infinite
        pixels, or `image_bytes` that is not a vector; TensorFlow refuses
        another dtype.
        Outputs: `logits`, `probabilities` `(batch, classes)` float32;
            `predicted_id` int32 and `predicted_label` string `(batch,)`;
            `top_k_ids` int32, `top_k_scores` float32, `top_k_labels` string
            `(batch, k)`, k = min(top_k, classes).

    Args:
        model: a `GMLPImageClassifier`.
        export_base: directory of versions, TF Serving's `--model_base_path`.
        label_names: optional class names (default "0", "1", ...), stored as an asset.
        top_k: int, number of classes in the top-k outputs.
        version: int, or None for one more than the largest existing version.
        preprocessing: an `image_preprocessing` config (the one the model
            was evaluated with). Default: the config of the model's
            `preprocessor.image_converter` when it is a `GMLPImageConverter`
            with an `image_size` (so `predict_image_bytes` prepares images as
            `model.predict` does), else `config_for_model(model)`, the same
            default the data pipeline uses at the model's resolution. Stored
            in the export's metadata under "image_preprocessing".
        center_crop_fraction, resize_method, antialias: optional overrides
            of the config's "crop_fraction", "resize_method", "antialias".

    Raises:
        ValueError: when the config (after overrides) differs from the one
            of the model's `GMLPImageConverter`: the export would prepare
            images otherwise than `model.predict`.

    Returns:
        The path of the written SavedModel directory, `export_base/<version>`.
    """
    if not isinstance(model, GMLPImageClassifier):
        raise TypeError(f"`model` must be a GMLPImageClassifier, got {type(model).__name__}.")
    top_k = check_top_k(top_k)
    label_names = label_names_for(model.num_classes, label_names)
    converter_config = _converter_config(model)
    if preprocessing is None:
        preprocessing = converter_config or image_preprocessing.config_for_model(model)
    overrides = {"crop_fraction": center_crop_fraction, "resize_method": resize_method,
                 "antialias": antialias}
    preprocessing = image_preprocessing.check_config(
        dict(preprocessing, **{k: v for k, v in overrides.items() if v is not None}))
    if converter_config is not None and preprocessing != converter_config:
        given = " (with the crop/resize overrides)" if any(
            v is not None for v in overrides.values()) else ""
        raise ValueError(
            f"`preprocessing`={preprocessing}{given}: differs from the "
            f"config of the model's preprocessor's GMLPImageConverter, {converter_config}, so "
            "`predict_image_bytes` would prepare images otherwise than `model.predict`. Pass "
            "neither (the export takes the converter's), or give the model "
            "`GMLPImageConverter.from_preprocessing_config(preprocessing)`.")
    expected = list(model.backbone.image_shape)
    if preprocessing["image_size"] + [preprocessing["channels"]] != expected:
        source = (f"The model's GMLPImageConverter config {preprocessing}"
                  if preprocessing == converter_config
                  else f"`preprocessing`={preprocessing}")
        raise ValueError(
            f"{source}: its image_size and channels must match the model's "
            f"image_shape {tuple(expected)}.")
    metadata = model_metadata(
        model, top_k=top_k, label_names=label_names, image_preprocessing=preprocessing,
    )

    def make_module(asset_dir):
        module = _ImageClassifierModule(model, label_names, top_k, preprocessing, metadata,
                                        asset_dir)
        return module, {
            "serving_default": module.serve_images,
            BYTES_SIGNATURE: module.serve_image_bytes,
        }

    return save_versioned(make_module, export_base, version)
