"""gMLP image encoder: conv patch stem, gMLP blocks, final LayerNorm."""

import json
import os

import keras

from keras_gmlp import validation
from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.layers.patch_embedding import PatchEmbedding
from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.models import arguments
from keras_gmlp.models.base import BackboneBase
from keras_gmlp.models.layout import check_divisible
from keras_gmlp.models.layout import get_layout_map
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.spatial_resampling import resample_spatial_weights


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPVisionBackbone(BackboneBase):
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
        spatial_projection: the SGUs' token mixing over the patches, "dense" (the paper's
            (n, n) W, default) or "toeplitz" (W[m, j] = t(m - j) along the row-major patch
            order: O(1) parameters in n, O(n log n) by FFT; see `SpatialGatingUnit`).
        dtype: optional dtype policy of every layer and of the model itself.

    Input: `(batch, height, width, channels)` images.
    Output: `(batch, num_patches, hidden_dim)`. The backbone has no `token_embedding` (None,
    keras-hub's convention for image backbones).

    Another resolution: `from_preset(preset, image_shape=...)` (here, on a keras_gmlp task or
    through `keras_hub.models.ImageClassifier.from_preset`) builds the backbone at the new
    shape and `load_weights` resamples each Spatial Gating Unit's `W` and `b` from the preset's
    patch grid to the new one (bicubic on the grid, `W` rescaled by the ratio of patch counts;
    `keras_gmlp.models.spatial_resampling`), as ViT position embeddings are interpolated for
    fine-tuning at a higher resolution. Every other weight is independent of the grid.
    """

    named_presets = VISION_PRESETS
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
        spatial_projection="dense",
        dtype=None,
        **kwargs,
    ):
        kwargs.pop(arguments.VERSION_KEY, None)
        self.validate_arguments(
            image_shape=image_shape,
            patch_size=patch_size,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            include_rescaling=include_rescaling,
            layer_norm_epsilon=layer_norm_epsilon,
            spatial_projection=spatial_projection,
            dtype=dtype,
            **kwargs,
        )
        check_divisible(hidden_dim=hidden_dim, ffn_dim=ffn_dim)  # under ModelParallel
        image_shape = tuple(int(size) for size in image_shape)
        height, width, _ = image_shape
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
                spatial_projection=spatial_projection,
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
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.spatial_projection = spatial_projection

    @property
    def patch_grid(self):
        """`(height, width)` of the patch grid, in patches."""
        return patch_grid(self.image_shape, self.patch_size)

    def load_weights(self, filepath, skip_mismatch=False, source_image_shape=None, **kwargs):
        """`keras.Model.load_weights`, also from weights saved at another image resolution.

        When the weights were saved on another patch grid, they are loaded into a backbone
        built at that shape and copied here, each Spatial Gating Unit's `W` and `b` resampled
        to this grid by `spatial_resampling.resample_spatial_weights` (bicubic on the grid,
        `W` scaled by old / new patch count). The same grid loads as Keras does, exactly.

        Args:
            filepath: a `.weights.h5` (or sharded `.weights.json`) file.
            skip_mismatch: as in `keras.Model.load_weights`.
            source_image_shape: `(height, width, channels)` the weights were saved at. Default:
                the `image_shape` of the `config.json` beside `filepath` when that is a
                `GMLPVisionBackbone` preset's (how keras-hub's preset loader calls this),
                else this backbone's own.
            **kwargs: as in `keras.Model.load_weights`.
        """
        if source_image_shape is None:
            source_image_shape = _preset_image_shape(filepath)
        if source_image_shape is None or tuple(source_image_shape) == self.image_shape:
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        config = {**self.get_config(), "image_shape": tuple(source_image_shape)}
        source = type(self).from_config(config)
        source.load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        self._copy_resampled_weights(source)

    def _copy_resampled_weights(self, source):
        resampled = {}
        for mine, theirs in zip(self._flatten_layers(), source._flatten_layers()):
            if isinstance(mine, SpatialGatingUnit):
                kernel, bias = resample_spatial_weights(
                    keras.ops.convert_to_numpy(theirs.spatial_kernel),
                    keras.ops.convert_to_numpy(theirs.spatial_bias),
                    source.patch_grid, self.patch_grid)
                resampled[id(mine.spatial_kernel)] = kernel
                resampled[id(mine.spatial_bias)] = bias
        # Same class and config but the grid, so the variables pair up in order.
        for mine, theirs in zip(self.variables, source.variables, strict=True):
            mine.assign(resampled.get(id(mine), theirs))

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": self.image_shape,
            "patch_size": self.patch_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "ffn_dim": self.ffn_dim,
            "dropout": self.dropout,
            "drop_path_rate": self.drop_path_rate,
            "include_rescaling": self.include_rescaling,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "spatial_projection": self.spatial_projection,
        }

    @classmethod
    def validate_arguments(cls, **kwargs):
        """Raises ValueError naming the first bad constructor argument, its value and what was
        expected: unknown names, missing required ones, out-of-range values, and an
        `image_shape` whose height or width is not a multiple of `patch_size`. Builds nothing.
        """
        kwargs = dict(kwargs)
        kwargs.pop(arguments.VERSION_KEY, None)
        arguments.check_known_arguments(cls, kwargs)
        checks = {
            "image_shape": _check_image_shape,
            "patch_size": validation.check_positive_int,
            "num_layers": validation.check_positive_int,
            "hidden_dim": validation.check_positive_int,
            "ffn_dim": lambda name, value: arguments.check_even_positive_int(
                name, value, "the Spatial Gating Unit splits it in halves"),
            "dropout": validation.check_rate,
            "drop_path_rate": validation.check_rate,
            "include_rescaling": arguments.check_bool,
            "layer_norm_epsilon": validation.check_positive_float,
            "spatial_projection": arguments.check_spatial_projection,
            "dtype": lambda name, value: arguments.check_dtype(value),
            "name": lambda name, value: arguments.check_name(value),
            "trainable": arguments.check_bool,
        }
        for name, value in kwargs.items():
            checks[name](name, value)
        if "image_shape" in kwargs and "patch_size" in kwargs:
            height, width, _ = kwargs["image_shape"]
            patch_size = kwargs["patch_size"]
            validation.check(height % patch_size == 0 and width % patch_size == 0, "image_shape",
                             tuple(kwargs["image_shape"]),
                             f"height and width multiples of `patch_size`={patch_size}")


def patch_grid(image_shape, patch_size):
    """`(height // patch_size, width // patch_size)`."""
    return image_shape[0] // patch_size, image_shape[1] // patch_size


def _preset_image_shape(filepath):
    """The `image_shape` of the GMLPVisionBackbone `config.json` beside `filepath`, or None.

    keras-hub's preset loader builds the backbone with the caller's `image_shape` and then
    calls `load_weights(preset/model.weights.h5)`; the preset's own shape is in its config.
    """
    path = os.path.join(os.path.dirname(os.fspath(filepath)), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict) or config.get("class_name") != "GMLPVisionBackbone":
        return None
    shape = config.get("config", {}).get("image_shape")
    return None if shape is None else tuple(int(size) for size in shape)


def _check_image_shape(name, value):
    validation.check(
        isinstance(value, (tuple, list)) and len(value) == 3
        and all(validation.is_int(size) and size >= 1 for size in value),
        name, value, "(height, width, channels), three positive ints")
