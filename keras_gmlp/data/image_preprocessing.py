"""Inference-time image preprocessing: one config dict and plain TensorFlow functions.

This module is the one home of inference-time image preprocessing. Evaluation in
`keras_gmlp.data.image_dataset`, the trainer's evaluation, the SavedModel's
`predict_image_bytes` signature, `keras_gmlp.models.GMLPImageConverter` (which wraps
`preprocess_batch`, so a keras-hub `GMLPImageClassifier.predict` on raw images) and a user's own
call all run `preprocess_image` with the same config, so they give the same pixels (and
predictions) for the same files. The config is a JSON-serializable dict, stored in the export's
metadata, in a trainer's model directory and in a converter's `get_config`:

    {"image_size": [height, width], "channels": 1 | 3, "crop_fraction": float in (0, 1],
     "resize_method": "bilinear" | ..., "antialias": bool}

Steps: decode (encoded bytes) to `channels` (gray repeated to RGB; RGB to gray with
`tf.image.rgb_to_grayscale`; alpha dropped), aspect-preserving central crop of `crop_fraction`
of the shorter side in the model's aspect ratio, resize to `image_size`
(`tf.image.resize(method, antialias)`, skipped when the crop already has that size), clip to
[0, 255]. Pixels are not normalised: the models rescale [0, 255] themselves.

The functions use TensorFlow ops only (no Python state), so they run eagerly, in `tf.data` maps
and in a `tf.function` (where keras-hub's `Task.fit`/`predict` run the converter).
"""

import numbers

import tensorflow as tf

from keras_gmlp.validation import check
from keras_gmlp.validation import is_int

# A centre crop helps at ImageNet-like resolutions, where objects rarely touch the border; at
# small resolutions (Fashion-MNIST's 28x28, CIFAR's 32x32, 8x8 digits) it cuts off the object.
DEFAULT_CROP_FRACTION = 0.875
CROP_MIN_SIDE = 128
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")
_KEYS = ("image_size", "channels", "crop_fraction", "resize_method", "antialias")


def default_crop_fraction(image_size):
    """0.875 when the shorter side is at least `CROP_MIN_SIDE` pixels, else 1.0 (no crop)."""
    return DEFAULT_CROP_FRACTION if min(image_size) >= CROP_MIN_SIDE else 1.0


def preprocessing_config(image_shape, *, crop_fraction=None, resize_method="bilinear",
                         antialias=True):
    """The preprocessing config for images of `image_shape` = (height, width, channels).

    `crop_fraction` None picks `default_crop_fraction((height, width))`.
    """
    image_shape = tuple(image_shape)
    check(len(image_shape) == 3, "image_shape", image_shape, "(height, width, channels)")
    height, width, channels = image_shape
    if crop_fraction is None:
        crop_fraction = default_crop_fraction((height, width))
    return check_config({"image_size": [height, width], "channels": channels,
                         "crop_fraction": crop_fraction, "resize_method": resize_method,
                         "antialias": antialias})


def config_for_model(model, **overrides):
    """`preprocessing_config` for an image classifier (or vision backbone) `model`'s input."""
    backbone = getattr(model, "backbone", model)
    return preprocessing_config(tuple(backbone.image_shape), **overrides)


def check_config(config, name="preprocessing"):
    """`config` validated and normalised (plain ints, floats, lists); ValueError naming the key.

    Messages name a key as `name['key']`, or as `key` alone when `name` is None (for
    constructors that take the keys as arguments, such as `GMLPImageConverter`).
    """
    check(isinstance(config, dict) and sorted(config) == sorted(_KEYS), name or "preprocessing",
          config, f"a dict with exactly the keys {list(_KEYS)}")

    def key(k):
        return f"{name}['{k}']" if name else k

    size = config["image_size"]
    check(isinstance(size, (list, tuple)) and len(size) == 2
          and all(is_int(s) and s > 0 for s in size),
          key("image_size"), size, "[height, width] of positive ints")
    check(is_int(config["channels"]) and config["channels"] in (1, 3),
          key("channels"), config["channels"], "1 or 3")
    fraction = config["crop_fraction"]
    check(isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and 0 < fraction <= 1,
          key("crop_fraction"), fraction, "a float in (0, 1]")
    check(config["resize_method"] in RESIZE_METHODS, key("resize_method"),
          config["resize_method"], f"one of {list(RESIZE_METHODS)}")
    check(isinstance(config["antialias"], bool), key("antialias"), config["antialias"],
          "True or False")
    return {"image_size": [int(size[0]), int(size[1])], "channels": int(config["channels"]),
            "crop_fraction": float(fraction), "resize_method": str(config["resize_method"]),
            "antialias": bool(config["antialias"])}


def decode_image(encoded, channels):
    """JPEG/PNG/GIF/BMP bytes (first GIF frame) -> float32 `(h, w, channels)` in [0, 255].

    Raises InvalidArgumentError for undecodable or empty images.
    """
    if channels == 1:
        # GIF and BMP cannot be decoded to 1 channel: decode natively, then drop alpha and
        # convert colour with tf.image.rgb_to_grayscale (ITU-R 601 weights), as match_channels.
        image = tf.cast(tf.io.decode_image(encoded, channels=0, expand_animations=False), tf.float32)
        image = tf.cond(tf.shape(image)[-1] >= 3, lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                        lambda: image[..., :1])
    else:
        image = tf.cast(tf.io.decode_image(encoded, channels=channels, expand_animations=False),
                        tf.float32)
    check_op = tf.debugging.assert_positive(tf.size(image), message="decoded to an empty image")
    with tf.control_dependencies([check_op]):
        return tf.identity(image)


def match_channels(image, channels):
    """Converts an image with a static channel count to `channels` (gray <-> RGB)."""
    have = image.shape[-1]
    if have == channels or have is None:
        return image
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"`channels`={channels}: cannot convert images with {have} channels.")


def resize(image, size, method="bilinear", antialias=True):
    """`tf.image.resize` to `size`, skipped (exact) when the image already has that size."""
    size = [int(s) for s in size]
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    return tf.cond(same, lambda: tf.cast(image, tf.float32),
                   lambda: tf.image.resize(image, size, method=method, antialias=antialias))


def central_crop(image, size, fraction):
    """The central crop covering `fraction` of the shorter side, in the aspect ratio of `size`."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    aspect = size[1] / size[0]
    crop_h = fraction * tf.minimum(shape[0], shape[1] / aspect)
    crop_w = crop_h * aspect
    crop_h = tf.maximum(tf.cast(tf.round(crop_h), tf.int32), 1)
    crop_w = tf.maximum(tf.cast(tf.round(crop_w), tf.int32), 1)
    top = (tf.shape(image)[0] - crop_h) // 2
    left = (tf.shape(image)[1] - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def preprocess_image(image, config):
    """One image `(h, w, c)` (any size, c = 1 or 3, values in [0, 255]) -> float32
    `(height, width, channels)` of `config`, ready for the model."""
    config = check_config(config)
    size, channels = config["image_size"], config["channels"]
    image = match_channels(tf.cast(image, tf.float32), channels)
    image = central_crop(image, size, config["crop_fraction"])
    image = resize(image, size, config["resize_method"], config["antialias"])
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(image, (*size, channels))


def preprocess_encoded(encoded, config):
    """Encoded image bytes (a scalar string) -> the model's input image (see `preprocess_image`)."""
    config = check_config(config)
    return preprocess_image(decode_image(encoded, config["channels"]), config)


def preprocess_batch(inputs, config):
    """A batch for the model: `inputs` is a 1-D string tensor of encoded images, or a 4-D array
    of same-size images `(batch, h, w, c)`. Returns float32 `(batch, height, width, channels)`."""
    config = check_config(config)
    spec = tf.TensorSpec((*config["image_size"], config["channels"]), tf.float32)
    inputs = tf.convert_to_tensor(inputs)
    if inputs.dtype == tf.string:
        return tf.map_fn(lambda e: preprocess_encoded(e, config), inputs, fn_output_signature=spec)
    return tf.map_fn(lambda i: preprocess_image(i, config), tf.cast(inputs, tf.float32),
                     fn_output_signature=spec)
