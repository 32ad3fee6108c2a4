"""SavedModel export of `GMLPImageClassifier`: float-pixel and encoded-bytes signatures."""

import tensorflow as tf

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

BYTES_SIGNATURE = "predict_image_bytes"


class _ImageClassifierModule(ServingModule):
    def __init__(self, model, label_names, top_k, resize_method, antialias, center_crop_fraction,
                 metadata, asset_dir):
        super().__init__(model, metadata, asset_dir)
        self._center_crop_fraction = center_crop_fraction
        self._image_shape = tuple(model.backbone.image_shape)
        self._top_k = min(top_k, model.num_classes)
        self._resize_method = resize_method
        self._antialias = antialias
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
        height, width, channels = self._image_shape
        # decode_image raises InvalidArgumentError ("Unknown image file format...", "Invalid
        # PNG data...") for bytes it cannot read; the request fails, the server keeps running.
        if channels == 1:
            # GIF and BMP cannot be decoded to 1 channel: decode natively, then drop alpha and
            # convert colour with tf.image.rgb_to_grayscale (ITU-R 601 weights).
            image = tf.cast(tf.io.decode_image(encoded, channels=0, expand_animations=False),
                            tf.float32)
            image = tf.cond(
                tf.shape(image)[-1] >= 3,
                lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                lambda: image[..., :1],
            )
        else:
            image = tf.cast(
                tf.io.decode_image(encoded, channels=channels, expand_animations=False),
                tf.float32,
            )
        check = tf.debugging.assert_positive(
            tf.size(image), message="image_bytes decoded to an empty image"
        )
        with tf.control_dependencies([check]):
            image = self._crop(image)
        image = tf.image.resize(
            image, (height, width), method=self._resize_method, antialias=self._antialias
        )
        # Pixels stay in [0, 255]: the model rescales internally, as in training.
        image = tf.clip_by_value(image, 0.0, 255.0)
        return tf.ensure_shape(image, self._image_shape)

    def _crop(self, image):
        """Central crop of `center_crop_fraction` of the shorter side, in the model's aspect ratio
        (keras_gmlp.data.images' evaluation crop; 1.0 keeps the largest such crop)."""
        height, width, _ = self._image_shape
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        aspect = width / height
        crop_h = self._center_crop_fraction * tf.minimum(shape[0], shape[1] / aspect)
        crop_w = crop_h * aspect
        crop_h = tf.maximum(tf.cast(tf.round(crop_h), tf.int32), 1)
        crop_w = tf.maximum(tf.cast(tf.round(crop_w), tf.int32), 1)
        top = (tf.shape(image)[0] - crop_h) // 2
        left = (tf.shape(image)[1] - crop_w) // 2
        return image[top : top + crop_h, left : left + crop_w]

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


def export_image_classifier(model, export_base, *, label_names=None, top_k=5, version=None,
                            center_crop_fraction=1.0, resize_method="bilinear", antialias=True):
    """Exports a `GMLPImageClassifier` as a TF Serving SavedModel under `export_base/<version>/`.

    Signatures (same outputs):
        serving_default: `images` float32 `(batch, height, width, channels)`
            at the model's `image_shape`, pixels in [0, 255].
        predict_image_bytes: `image_bytes` `(batch,)` string, each a JPEG,
            PNG, GIF or BMP file (any size; first frame of a GIF), decoded to
            the model's channel count (gray repeated to RGB; RGB to gray with
            `tf.image.rgb_to_grayscale`; alpha dropped), centrally cropped to
            `center_crop_fraction` of the shorter side in the model's aspect
            ratio, resized to its height and width with
            `tf.image.resize(method=resize_method, antialias=antialias)` and
            clipped to [0, 255] (the model rescales pixels itself), as
            keras_gmlp.data.images prepares evaluation images. Undecodable
            bytes fail the request with InvalidArgumentError.
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
        center_crop_fraction: float in (0, 1], the evaluation crop of the
            training pipeline (keras_gmlp.data.images: 0.875 by default, 1.0
            for digits); 1.0 keeps the largest central crop with the model's
            aspect ratio (the whole image when the aspect ratios agree).
        resize_method, antialias: how encoded images are resized (defaults
            match keras_gmlp.data.images: bilinear with antialiasing).

    Returns:
        The path of the written SavedModel directory, `export_base/<version>`.
    """
    if not isinstance(model, GMLPImageClassifier):
        raise TypeError(f"`model` must be a GMLPImageClassifier, got {type(model).__name__}.")
    top_k = check_top_k(top_k)
    label_names = label_names_for(model.num_classes, label_names)
    if not isinstance(center_crop_fraction, (int, float)) or not 0 < center_crop_fraction <= 1:
        raise ValueError(
            f"`center_crop_fraction` must be a float in (0, 1], got {center_crop_fraction!r}."
        )
    center_crop_fraction = float(center_crop_fraction)
    metadata = model_metadata(
        model, top_k=top_k, label_names=label_names, center_crop_fraction=center_crop_fraction,
        resize_method=resize_method, antialias=antialias,
    )

    def make_module(asset_dir):
        module = _ImageClassifierModule(model, label_names, top_k, resize_method, antialias,
                                        center_crop_fraction, metadata, asset_dir)
        return module, {
            "serving_default": module.serve_images,
            BYTES_SIGNATURE: module.serve_image_bytes,
        }

    return save_versioned(make_module, export_base, version)
