"""timm's gMLP (`timm/models/mlp_mixer.py`, `gmlp_*16_224`) to `GMLPImageClassifier`.

timm's layout, per block `i` (d = hidden_dim, f = ffn_dim, n = patches):

    stem.proj.{weight (d, c, p, p), bias (d,)}               Conv2d, stride p
    blocks.i.norm.{weight, bias} (d,)                        LayerNorm, eps 1e-6
    blocks.i.mlp_channels.fc1.{weight (f, d), bias (f,)}     Linear, exact GELU
    blocks.i.mlp_channels.gate.norm.{weight, bias} (f/2,)    LayerNorm, eps 1e-5
    blocks.i.mlp_channels.gate.proj.{weight (n, n), bias (n,)}
    blocks.i.mlp_channels.fc2.{weight (d, f/2), bias (d,)}
    norm.{weight, bias} (d,)                                 LayerNorm, eps 1e-6
    head.{weight (classes, d), bias (classes,)}              after the mean over tokens

PyTorch Linear weights are (out, in) and Keras Dense kernels (in, out); the
Conv2d weight (out, in, kh, kw) becomes a Keras (kh, kw, in, out) kernel; the
SGU's `spatial_kernel` is stored (out, in) like `gate.proj.weight` and copies
as is. timm flattens the stem's (B, d, H', W') output row-major to
(B, H'W', d), which is `PatchEmbedding`'s token order. timm's SGU chunks
`fc1`'s output into `u` then `v`, so `fc1`'s first f/2 rows (and bias
entries) become `channel_projection_u` and the rest `channel_projection_v`.
"""

import logging
import math

import numpy as np

from keras_gmlp.convert.timm_checkpoint import load_timm_state_dict
from keras_gmlp.models.image_classifier import GMLPImageClassifier
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.presets import get_preset
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone

logger = logging.getLogger(__name__)

# The config entries that decide timm's tensor shapes (the others only matter for training).
ARCHITECTURE_KEYS = ("image_shape", "patch_size", "num_layers", "hidden_dim", "ffn_dim")


def timm_state_dict_shapes(config, num_classes):
    """Every key of timm's gMLP state dict with its shape, in timm's order.

    Args:
        config: a `GMLPVisionBackbone` config (e.g. `VISION_PRESETS[name]`);
            only `ARCHITECTURE_KEYS` are read.
        num_classes: int, rows of `head.weight`.

    Returns:
        `dict[str, tuple[int, ...]]`. Nothing is allocated, so this checks the
        full-size layouts cheaply.
    """
    missing = [key for key in ARCHITECTURE_KEYS if key not in config]
    if missing:
        raise ValueError(f"`config` lacks {missing}; it needs all of {ARCHITECTURE_KEYS}.")
    height, width, channels = tuple(config["image_shape"])
    patch = config["patch_size"]
    hidden, ffn = config["hidden_dim"], config["ffn_dim"]
    if height % patch or width % patch:
        raise ValueError(
            f"image_shape {tuple(config['image_shape'])} is not divisible by patch_size={patch}."
        )
    tokens = (height // patch) * (width // patch)
    shapes = {"stem.proj.weight": (hidden, channels, patch, patch), "stem.proj.bias": (hidden,)}
    for i in range(config["num_layers"]):
        block = f"blocks.{i}."
        mlp = block + "mlp_channels."
        shapes.update(
            {
                block + "norm.weight": (hidden,),
                block + "norm.bias": (hidden,),
                mlp + "fc1.weight": (ffn, hidden),
                mlp + "fc1.bias": (ffn,),
                mlp + "gate.norm.weight": (ffn // 2,),
                mlp + "gate.norm.bias": (ffn // 2,),
                mlp + "gate.proj.weight": (tokens, tokens),
                mlp + "gate.proj.bias": (tokens,),
                mlp + "fc2.weight": (hidden, ffn // 2),
                mlp + "fc2.bias": (hidden,),
            }
        )
    shapes.update(
        {
            "norm.weight": (hidden,),
            "norm.bias": (hidden,),
            "head.weight": (num_classes, hidden),
            "head.bias": (num_classes,),
        }
    )
    return shapes


def infer_timm_config(state_dict, image_shape=None):
    """Reads a gMLP architecture off the shapes of a timm state dict.

    Args:
        state_dict: mapping of timm names to arrays (anything with `.shape`).
        image_shape: optional `(height, width, channels)`. Without it the
            image is taken to be square: `sqrt(n) * patch_size` on each side.

    Returns:
        `(config, num_classes)`: `config` holds `ARCHITECTURE_KEYS`, plus the
        training settings (e.g. `drop_path_rate`) of the `VISION_PRESETS`
        entry with the same architecture, if there is one; `num_classes` is
        the rows of `head.weight`, or None without one.

    Raises:
        ValueError: a key the inference needs is missing or malformed.
    """

    def shape(key, rank):
        if key not in state_dict:
            raise ValueError(
                f"Cannot infer the gMLP config: the state dict has no {key!r} "
                "(is this a timm gmlp_* checkpoint?)."
            )
        value = tuple(state_dict[key].shape)
        if len(value) != rank:
            raise ValueError(f"{key!r} has shape {value}, expected a rank-{rank} tensor.")
        return value

    hidden, channels, patch, patch_width = shape("stem.proj.weight", 4)
    if patch != patch_width:
        raise ValueError(
            f"'stem.proj.weight' has shape {(hidden, channels, patch, patch_width)}: "
            "non-square patches are not supported."
        )
    # The highest block index present, so a block with a missing entry is reported as missing.
    block_indices = {
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("blocks.") and key.split(".")[1].isdigit()
    }
    num_layers = max(block_indices) + 1 if block_indices else 0
    ffn = shape("blocks.0.mlp_channels.fc1.weight", 2)[0]
    tokens = shape("blocks.0.mlp_channels.gate.proj.weight", 2)[0]
    if image_shape is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"'blocks.0.mlp_channels.gate.proj.weight' implies {tokens} patches, which is "
                "not a square number; pass image_shape=(height, width, channels)."
            )
        image_shape = (side * patch, side * patch, channels)
    config = dict(
        image_shape=tuple(image_shape),
        patch_size=patch,
        num_layers=num_layers,
        hidden_dim=hidden,
        ffn_dim=ffn,
    )
    num_classes = shape("head.weight", 2)[0] if "head.weight" in state_dict else None
    preset = matching_preset(config)
    if preset is not None:
        logger.info("The checkpoint has the architecture of preset %r.", preset)
        config = {**get_preset(preset, VISION_PRESETS), **config}
    return config, num_classes


def matching_preset(config):
    """Name of the `VISION_PRESETS` entry with `config`'s architecture, or None."""
    for name, preset in VISION_PRESETS.items():
        if all(_same(preset[key], config.get(key)) for key in ARCHITECTURE_KEYS):
            return name
    return None


def check_timm_state_dict(state_dict, config, num_classes):
    """Raises a ValueError listing every missing, unexpected or misshapen key.

    Each line names the key and, for shape mismatches, the checkpoint's shape
    and the shape `config` and `num_classes` call for.
    """
    expected = timm_state_dict_shapes(config, num_classes)
    problems = []
    for key, shape in expected.items():
        if key not in state_dict:
            problems.append(f"missing key {key!r} (expected shape {shape})")
        elif tuple(state_dict[key].shape) != shape:
            problems.append(
                f"key {key!r} has shape {tuple(state_dict[key].shape)} in the checkpoint, "
                f"but the model expects {shape}"
            )
    for key in state_dict:
        if key not in expected:
            problems.append(
                f"unexpected key {key!r} (shape {tuple(state_dict[key].shape)}) is not part "
                "of timm's gMLP layout"
            )
    if problems:
        architecture = ", ".join(f"{key}={config[key]!r}" for key in ARCHITECTURE_KEYS)
        raise ValueError(
            f"The timm checkpoint does not fit a gMLP with {architecture}, "
            f"num_classes={num_classes}:\n  " + "\n  ".join(problems)
        )


def timm_to_keras(state_dict, preset=None, num_classes=None, **config_overrides):
    """Builds a `GMLPImageClassifier` holding a timm gMLP checkpoint's weights.

    The result gives timm's logits for the same image: feed it pixels in
    [0, 255] (see `preprocess_image`), which the model maps to [-1, 1] as
    timm's mean = std = 0.5 normalisation does.

    Args:
        state_dict: a path (`.safetensors`, or `.pth`/`.pt`/`.bin` with torch
            installed) or a mapping of timm names to arrays; see
            `load_timm_state_dict`, including its `module.`/`model.` prefix
            handling.
        preset: optional `VISION_PRESETS` name (`"gmlp_s16_224"` for timm's
            ImageNet weights). Default: inferred from the tensor shapes (a
            square image of `sqrt(n) * patch_size` pixels unless
            `image_shape` is given), using a preset's training settings when
            the architecture matches one.
        num_classes: optional int; default `head.weight.shape[0]`.
        **config_overrides: `GMLPVisionBackbone` arguments that replace the
            preset's or inferred ones (e.g. `image_shape`, `drop_path_rate`,
            `dtype`).

    Returns:
        A `GMLPImageClassifier` (inference mode is the default when calling it).

    Raises:
        ValueError: listing every missing key, unexpected key and shape
            mismatch (with both shapes); nothing is skipped or guessed.
    """
    state_dict = load_timm_state_dict(state_dict)
    if preset is not None:
        config = get_preset(preset, VISION_PRESETS)
        if num_classes is None and "head.weight" in state_dict:
            num_classes = int(state_dict["head.weight"].shape[0])
    else:
        config, inferred_classes = infer_timm_config(
            state_dict, image_shape=config_overrides.get("image_shape")
        )
        num_classes = inferred_classes if num_classes is None else num_classes
    if num_classes is None:
        raise ValueError(
            "The state dict has no 'head.weight' to read num_classes from; timm gMLP "
            "checkpoints end in a Linear `head`."
        )
    config.update(config_overrides)
    check_timm_state_dict(state_dict, config, num_classes)

    model = GMLPImageClassifier(GMLPVisionBackbone(**config), num_classes)
    assigned = set()
    for key, variable, layout in _timm_to_keras_variables(model):
        value = np.asarray(state_dict[key], dtype="float32")
        value = layout(value) if layout is not None else value
        if tuple(value.shape) != tuple(variable.shape):  # a layout bug, not a user error
            raise RuntimeError(
                f"{key!r} converts to shape {value.shape} but {variable.path} is {variable.shape}."
            )
        variable.assign(value.astype(variable.dtype))
        assigned.add(id(variable))
    unset = [variable.path for variable in model.weights if id(variable) not in assigned]
    if unset:
        raise RuntimeError(f"The converter does not set these Keras weights: {unset}.")
    return model


def _conv_kernel(weight):
    return np.transpose(weight, (2, 3, 1, 0))


def _dense_kernel(weight):
    return np.transpose(weight)


def _first_half(layout):
    # The u half: the first half of the last axis after `layout` (Keras kernels are (in, out)).
    return lambda value: np.split(value if layout is None else layout(value), 2, axis=-1)[0]


def _second_half(layout):
    return lambda value: np.split(value if layout is None else layout(value), 2, axis=-1)[1]


def _timm_to_keras_variables(model):
    """Yields (timm key, Keras variable, layout function or None) for every weight."""
    backbone = model.backbone
    stem = backbone.patch_embedding.projection
    yield "stem.proj.weight", stem.kernel, _conv_kernel
    yield "stem.proj.bias", stem.bias, None
    for i, block in enumerate(backbone.blocks):
        prefix = f"blocks.{i}."
        mlp = prefix + "mlp_channels."
        sgu = block.spatial_gating_unit
        yield prefix + "norm.weight", block.norm.gamma, None
        yield prefix + "norm.bias", block.norm.beta, None
        # timm's fc1 holds u's rows then v's (its SGU chunks fc1's output in two).
        yield mlp + "fc1.weight", block.channel_projection_u.kernel, _first_half(_dense_kernel)
        yield mlp + "fc1.weight", block.channel_projection_v.kernel, _second_half(_dense_kernel)
        yield mlp + "fc1.bias", block.channel_projection_u.bias, _first_half(None)
        yield mlp + "fc1.bias", block.channel_projection_v.bias, _second_half(None)
        yield mlp + "gate.norm.weight", sgu.norm.gamma, None
        yield mlp + "gate.norm.bias", sgu.norm.beta, None
        yield mlp + "gate.proj.weight", sgu.spatial_kernel, None
        yield mlp + "gate.proj.bias", sgu.spatial_bias, None
        yield mlp + "fc2.weight", block.channel_projection_out.kernel, _dense_kernel
        yield mlp + "fc2.bias", block.channel_projection_out.bias, None
    yield "norm.weight", backbone.final_norm.gamma, None
    yield "norm.bias", backbone.final_norm.beta, None
    yield "head.weight", model.head.kernel, _dense_kernel
    yield "head.bias", model.head.bias, None


def _same(a, b):
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    return a == b
