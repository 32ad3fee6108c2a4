"""Image to token sequence: the conv stem of ViT-style models."""

import keras
from keras import ops

from keras_gmlp.validation import check
from keras_gmlp.validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_gmlp")
class PatchEmbedding(keras.layers.Layer):
    """Splits an image into non-overlapping patches and projects each one.

    A `Conv2D` with kernel size and stride `patch_size` (timm's `stem.proj`),
    flattened to `(batch, num_patches, hidden_dim)` in row-major patch order.

    Args:
        patch_size: int, side of a square patch.
        hidden_dim: int, channels of each token.

    Call arguments:
        inputs: `(batch, height, width, channels)` channels-last images whose
            height and width are multiples of `patch_size`.
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="valid",
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        check(len(input_shape) == 4, f"{self.name} input shape", input_shape,
              "(batch, height, width, channels) images")
        for axis_name, size in (("height", input_shape[1]), ("width", input_shape[2])):
            check(size is None or size % self.patch_size == 0, f"{self.name} image {axis_name}", size,
                  f"a multiple of patch_size={self.patch_size}")
        self.projection.build(input_shape)

    def call(self, inputs):
        x = self.projection(inputs)
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        return ops.reshape(x, (batch, height * width, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        batch, height, width = tuple(input_shape)[:3]
        tokens = None
        if height is not None and width is not None:
            tokens = (height // self.patch_size) * (width // self.patch_size)
        return (batch, tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "hidden_dim": self.hidden_dim})
        return config
