"""Images (arrays in [0, 255] or encoded file bytes) -> `GMLPImageClassifier` inputs.

A thin keras-hub wrapper: resizing is keras-hub's `ImageConverter` (no scaling, because
`GMLPVisionBackbone` rescales [0, 255] to [-1, 1] itself with `include_rescaling=True`), and
file bytes (JPEG/PNG/GIF/BMP) are decoded by TensorFlow's `tf.io.decode_image`. The training
pipelines' image preprocessing lives in `keras_gmlp.data.images`; this converter only makes
`fit`/`predict` accept what a user holds.
"""

import keras
import keras_hub

from keras_gmlp.models.vision_backbone import GMLPVisionBackbone


def _is_encoded(inputs):
    import numpy as np

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
    """keras-hub's `ImageConverter` for gMLP: resizes to `image_size`, leaves pixels in
    [0, 255], and decodes encoded image bytes first.

    Args:
        image_size: `(height, width)`, the backbone's `image_shape[:2]`.
        channels: channels of decoded file bytes (the backbone's `image_shape[2]`).
        **kwargs: `keras_hub.layers.ImageConverter` arguments (`scale`/`offset` stay None).
    """

    backbone_cls = GMLPVisionBackbone

    def __init__(self, image_size=None, channels=3, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        self.channels = channels

    def call(self, inputs):
        if _is_encoded(inputs):
            inputs = self._decode(inputs)
        return super().call(inputs)

    def _decode(self, inputs):
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs, tf.string)
        unbatched = inputs.shape.rank == 0
        batch = inputs[None] if unbatched else inputs
        height, width = self.image_size

        def decode(data):
            image = tf.io.decode_image(data, channels=self.channels, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), (height, width))

        images = tf.map_fn(decode, batch, fn_output_signature=tf.TensorSpec(
            [height, width, self.channels], tf.float32))
        return images[0] if unbatched else images

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """Images -> `GMLPImageClassifier` inputs through a `GMLPImageConverter`; labels pass."""

    backbone_cls = GMLPVisionBackbone
    image_converter_cls = GMLPImageConverter
