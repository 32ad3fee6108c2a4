"""Images (arrays in [0, 255] or encoded file bytes) -> `GMLPImageClassifier` inputs.

`GMLPImageConverter` is a keras-hub `ImageConverter` that wraps
`keras_gmlp.data.image_preprocessing`, the one home of inference-time image preprocessing:
its `call` is `image_preprocessing.preprocess_batch` with the converter's config (decode,
match channels, aspect-preserving central crop of `crop_fraction`, resize, clip to [0, 255]).
So `GMLPImageClassifier.predict` on raw images or file bytes gives the pixels (and predictions)
of the trainers' evaluation, `keras_gmlp.data.image_dataset(training=False)` and the
SavedModel's `predict_image_bytes`; `keras_gmlp.export.export_image_classifier` takes its config
from a model's converter. Pixels are not scaled: `GMLPVisionBackbone` rescales [0, 255] to
[-1, 1] itself (`include_rescaling=True`). Training augmentation stays in the data pipelines
(`keras_gmlp.data.images`).
"""

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils.tensor_utils import convert_to_numpy
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_gmlp import validation
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone

# keras-hub ImageConverter arguments this converter replaces (or cannot honour), and why.
_CROP = "use `crop_fraction` (the crop always keeps the aspect ratio)"
_REPLACED = {
    "interpolation": "use `resize_method`",
    "crop_to_aspect_ratio": _CROP,
    "pad_to_aspect_ratio": _CROP,
    "bounding_box_format": "it converts images only",
}


def _is_encoded(inputs):
    if isinstance(inputs, (bytes, str)):
        return True
    if isinstance(inputs, (list, tuple)):
        return len(inputs) > 0 and isinstance(inputs[0], (bytes, str))
    if isinstance(inputs, np.ndarray):
        return inputs.dtype.kind in "OSU"
    dtype = getattr(inputs, "dtype", None)
    return dtype is not None and getattr(dtype, "name", str(dtype)) == "string"


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPImageConverter(keras_hub.layers.ImageConverter):
    """keras-hub's `ImageConverter` for gMLP, running `keras_gmlp.data.image_preprocessing`.

    Takes a batch of images `(batch, h, w, c)` or one image `(h, w, c)` (any size, c = 1 or 3,
    values in [0, 255], any dtype), or encoded JPEG/PNG/GIF/BMP bytes (a string or a 1-D
    batch of strings), and returns float32 `(batch, height, width, channels)` (or one image),
    exactly `image_preprocessing.preprocess_batch(inputs, converter.preprocessing_config)`. An
    eager list of images of different sizes gives each image's `preprocess_batch`, stacked.
    Runs eagerly (returning backend tensors) and inside `tf.data` maps, where keras-hub's
    `Task.fit`/`predict` run it on every backend; needs TensorFlow, as keras_gmlp.data does.

    Args:
        image_size: `(height, width)`, the backbone's `image_shape[:2]`; settable later
            (keras-hub's `preprocessor.image_size = ...`), required before the first call.
        channels: 1 or 3, the backbone's `image_shape[2]` (gray and RGB inputs are converted).
        crop_fraction: float in (0, 1], the central crop's share of the shorter side; None for
            `image_preprocessing.default_crop_fraction(image_size)` (no crop below 128 pixels).
        resize_method: a `tf.image.resize` method (`image_preprocessing.RESIZE_METHODS`).
        antialias: bool, `tf.image.resize`'s antialiasing when downsampling.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`). keras-hub's `scale` and
            `offset` must stay None; `interpolation`, `crop_to_aspect_ratio`,
            `pad_to_aspect_ratio` and `bounding_box_format` are replaced by the arguments above.

    Example:
    ```python
    converter = GMLPImageConverter(image_size=(224, 224))        # crop_fraction 0.875
    converter([open("cat.jpg", "rb").read()])                    # (1, 224, 224, 3) float32
    same = GMLPImageConverter.from_preprocessing_config(converter.preprocessing_config)
    ```
    """

    backbone_cls = GMLPVisionBackbone

    def __init__(self, image_size=None, channels=3, crop_fraction=None, resize_method="bilinear",
                 antialias=True, **kwargs):
        for name in ("scale", "offset"):
            value = kwargs.pop(name, None)
            validation.check(value is None, name, value, "None: GMLPVisionBackbone rescales "
                             "[0, 255] pixels itself (include_rescaling=True)")
        for name, replacement in _REPLACED.items():
            if name in kwargs:
                raise ValueError(f"`{name}`={kwargs[name]!r}: GMLPImageConverter does not take "
                                 f"it; {replacement}.")
        data_format = kwargs.pop("data_format", None)
        validation.check(data_format in (None, "channels_last"), "data_format", data_format,
                         "None or 'channels_last' (gMLP's patch stem is channels-last)")
        # The base class' Resizing layer stays unused (image_size=None): resizing is
        # image_preprocessing's, and `image_size` is this class' own settable property.
        super().__init__(image_size=None, data_format="channels_last", **kwargs)
        self._image_size = None
        self.channels = channels
        self.crop_fraction = crop_fraction
        self.resize_method = resize_method
        self.antialias = antialias
        checked = self._config(image_size)  # validates every argument, naming it
        # Plain Python values, so that get_config is JSON (a preset's image_converter.json).
        self.channels = checked["channels"]
        self.crop_fraction = None if crop_fraction is None else checked["crop_fraction"]
        self.resize_method = checked["resize_method"]
        self.antialias = checked["antialias"]
        self.image_size = image_size

    @property
    def image_size(self):
        """Settable `(height, width)` tuple of ints (or None): the output image size."""
        return self._image_size

    @image_size.setter
    def image_size(self, value):
        if value is not None:
            self._config(value)
            value = (int(value[0]), int(value[1]))
        self._image_size = value

    def _config(self, image_size):
        # Imported here: `import keras_gmlp.models` does not need TensorFlow (a converter does).
        from keras_gmlp.data import image_preprocessing

        validation.check(image_size is None or (isinstance(image_size, (list, tuple))
                                                and len(image_size) == 2),
                         "image_size", image_size, "(height, width) of positive ints, or None")
        # With no image_size yet, check the other arguments at a stand-in size.
        size = [1, 1] if image_size is None else list(image_size)
        crop_fraction = self.crop_fraction
        if crop_fraction is None and all(validation.is_int(s) for s in size):
            crop_fraction = image_preprocessing.default_crop_fraction(size)
        return image_preprocessing.check_config(
            {"image_size": size, "channels": self.channels, "crop_fraction": crop_fraction,
             "resize_method": self.resize_method, "antialias": self.antialias}, name=None)

    @property
    def preprocessing_config(self):
        """The `keras_gmlp.data.image_preprocessing` config dict this converter applies (what
        `export_image_classifier` and the trainers' evaluation take)."""
        validation.check(self.image_size is not None, "image_size", None,
                         "(height, width) set before the converter preprocesses images")
        return self._config(self.image_size)

    @classmethod
    def from_preprocessing_config(cls, config, **kwargs):
        """The converter applying `config` (an `image_preprocessing` config dict, e.g. a
        trainer's `preprocessing` or an export's metadata["image_preprocessing"])."""
        from keras_gmlp.data import image_preprocessing

        config = image_preprocessing.check_config(config)
        return cls(image_size=tuple(config["image_size"]), channels=config["channels"],
                   crop_fraction=config["crop_fraction"], resize_method=config["resize_method"],
                   antialias=config["antialias"], **kwargs)

    def call(self, inputs):
        if isinstance(inputs, dict):
            raise ValueError(f"`inputs` is a dict with keys {sorted(inputs)}: expected images or "
                             "encoded image bytes (GMLPImageConverter converts images only).")
        if _is_encoded(inputs) and not _is_tf_tensor(inputs):
            import tensorflow as tf

            inputs = tf.convert_to_tensor(inputs, tf.string)
        return self._preprocess(inputs)

    @preprocessing_function
    def _preprocess(self, inputs):
        # keras-hub's wrapper: eager inputs arrive as backend tensors (strings as tf), and an
        # eager call outside a preprocessor returns backend tensors; in tf.data it is a no-op.
        import tensorflow as tf

        from keras_gmlp.data import image_preprocessing

        config = self.preprocessing_config
        if isinstance(inputs, tf.RaggedTensor):
            # A list of images of different sizes (keras-hub makes it ragged): each image as
            # one unbatched call. Eager only: a traced row has no static channel count.
            validation.check(tf.executing_eagerly(), "inputs",
                             f"a ragged batch of shape {inputs.shape} in a tf.function",
                             "images of one size, or encoded bytes (any sizes)")
            return tf.stack([self._preprocess_one(row.to_tensor(), config) for row in inputs])
        if not _is_tf_tensor(inputs):
            inputs = tf.convert_to_tensor(convert_to_numpy(inputs))
        rank = inputs.shape.rank
        if inputs.dtype == tf.string:
            validation.check(rank in (0, 1), "inputs", f"a string tensor of shape {inputs.shape}",
                             "encoded image bytes: a string or a 1-D batch of strings")
            unbatched = rank == 0
        else:
            validation.check(rank in (3, 4), "inputs", f"an array of shape {inputs.shape}",
                             "images (batch, height, width, channels) or one image (height, "
                             "width, channels)")
            unbatched = rank == 3
        if unbatched:
            return self._preprocess_one(inputs, config)
        return image_preprocessing.preprocess_batch(inputs, config)

    @staticmethod
    def _preprocess_one(image, config):
        from keras_gmlp.data import image_preprocessing

        return image_preprocessing.preprocess_batch(image[None], config)[0]

    def get_config(self):
        # Layer's config (name, trainable, dtype) and this class' arguments; the base class'
        # scale/offset/interpolation/crop/pad/bounding-box entries do not apply.
        config = super(keras_hub.layers.ImageConverter, self).get_config()
        config.update({"image_size": self.image_size, "channels": self.channels,
                       "crop_fraction": self.crop_fraction, "resize_method": self.resize_method,
                       "antialias": self.antialias})
        return config


def _is_tf_tensor(value):
    import tensorflow as tf

    return isinstance(value, (tf.Tensor, tf.RaggedTensor))


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """Images -> `GMLPImageClassifier` inputs through a `GMLPImageConverter`; labels pass."""

    backbone_cls = GMLPVisionBackbone
    image_converter_cls = GMLPImageConverter
