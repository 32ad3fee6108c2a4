"""gMLP image encoder: conv patch stem, gMLP blocks, final LayerNorm."""

import keras

from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.layers.patch_embedding import PatchEmbedding
from keras_gmlp.models.base import FunctionalModel
from keras_gmlp.models.layout import get_layout_map
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.presets import get_preset


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPVisionBackbone(FunctionalModel):
    """The paper's vision gMLP, laid out like timm's `gmlp_*16_224`.

    Images are rescaled from [0, 255] to [-1, 1] (timm's mean = std = 0.5
    normalisation) when `include_rescaling` is True, cut into
    `patch_size` patches by a strided convolution, passed through
    `num_layers` gMLP blocks over the `(H / p) * (W / p)` tokens, and
    layer-normalised.

    Args:
        image_shape: `(height, width, channels)`; height and width must be
            multiples of `patch_size`.
        patch_size: int, side of the square patches.
        num_layers: int, number of gMLP blocks.
        hidden_dim: int, d_model.
        ffn_dim: int, d_ffn (even).
        dropout: float, dropout on each block's output branch.
        drop_path_rate: float, stochastic-depth rate of the last block,
            decayed linearly to 0 at the first (paper: 1 - survival prob).
        include_rescaling: bool, map [0, 255] pixels to [-1, 1] in the model.
        layer_norm_epsilon: float, epsilon of block and final LayerNorms (1e-6).
        dtype: optional dtype policy for all layers.

    Input: `(batch, height, width, channels)` images.
    Output: `(batch, num_patches, hidden_dim)`.
    """

    get_layout_map = staticmethod(get_layout_map)  # keras-hub's Backbone API

    def __init__(
        self,
        image_shape,
        patch_size,
        num_layers,
        hidden_dim,
        ffn_dim,
        dropout=0.0,
        drop_path_rate=0.0,
        include_rescaling=True,
        layer_norm_epsilon=1e-6,
        dtype=None,
        **kwargs,
    ):
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or any(
            not isinstance(size, int) or size < 1 for size in image_shape
        ):
            raise ValueError(
                f"`image_shape` must be (height, width, channels) positive ints, got {image_shape}."
            )
        height, width, _ = image_shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`image_shape` {image_shape} must have height and width divisible by "
                f"`patch_size`={patch_size}."
            )
        num_patches = (height // patch_size) * (width // patch_size)

        # Layers are locals until keras.Model.__init__ has run (see GMLPBackbone).
        rescaling = None
        if include_rescaling:
            rescaling = keras.layers.Rescaling(
                1.0 / 127.5, offset=-1.0, dtype=dtype, name="rescaling"
            )
        patch_embedding = PatchEmbedding(
            patch_size, hidden_dim, dtype=dtype, name="patch_embedding"
        )
        blocks = [
            GMLPBlock(
                hidden_dim,
                ffn_dim,
                num_patches,
                dropout=dropout,
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
        )

        images = keras.Input(shape=image_shape, name="images")
        x = images if rescaling is None else rescaling(images)
        x = patch_embedding(x)
        for block in blocks:
            x = block(x)
        x = final_norm(x)
        super().__init__(inputs=images, outputs=x, dtype=dtype, **kwargs)
        self.rescaling = rescaling
        self.patch_embedding = patch_embedding
        self.blocks = blocks
        self.final_norm = final_norm
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.ffn_dim = ffn_dim
        self.num_patches = num_patches
        self.include_rescaling = include_rescaling
        self._remember_config(
            image_shape=image_shape,
            patch_size=patch_size,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            include_rescaling=include_rescaling,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
        )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds a vision preset (see `presets.VISION_PRESETS`), with overrides."""
        return cls(**{**get_preset(preset, VISION_PRESETS), **overrides})
