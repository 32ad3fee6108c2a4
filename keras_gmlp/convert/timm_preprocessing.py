"""timm's evaluation preprocessing for `gmlp_s16_224`, producing the Keras model's input.

timm's `gmlp_s16_224.ra3_in1k` uses the `_cfg` defaults of
`timm/models/mlp_mixer.py`: input 224x224, `crop_pct=0.875`, bicubic
interpolation, mean = std = (0.5, 0.5, 0.5). Its eval transform
(`timm.data.create_transform(..., is_training=False)`) is torchvision's
`Resize(floor(224 / 0.875) = 256)` of the shorter side on a PIL image,
`CenterCrop(224)`, `ToTensor()` (/255) and `Normalize(0.5, 0.5)`. The resize
and crop are reproduced here with PIL, as torchvision does them; the last two
steps are the model's own `Rescaling(1 / 127.5, offset=-1)`, so this function
returns pixels in [0, 255].
"""

import math
import os

import numpy as np

IMAGE_SIZE = 224
CROP_PCT = 0.875
INTERPOLATION = "bicubic"

_PIL_FILTERS = {
    "nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS"
}


def preprocess_image(image, image_size=IMAGE_SIZE, crop_pct=CROP_PCT, interpolation=INTERPOLATION):
    """Turns an RGB image into a `GMLPImageClassifier` input as timm would see it.

    Resizes the shorter side to `floor(image_size / crop_pct)` (256 for the
    defaults; the longer side keeps the aspect ratio, truncated to an int) and
    crops the central `image_size` square, exactly as timm's eval transform
    for `gmlp_s16_224` with PIL. Pixels stay in [0, 255]: the model rescales
    them to [-1, 1] itself (timm's mean = std = 0.5). For a model built with
    `include_rescaling=False`, compute `x / 127.5 - 1` yourself.

    Args:
        image: a `PIL.Image.Image` (converted to RGB), a path to an image
            file, or a NumPy `(height, width, 3)` RGB array: uint8, or float
            in [0, 255] (resized per channel without rounding to uint8).
        image_size: int, side of the output square.
        crop_pct: float in (0, 1], the fraction of the resized shorter side
            kept by the crop.
        interpolation: "bicubic" (timm's setting), "bilinear", "nearest" or
            "lanczos".

    Returns:
        float32 array `(image_size, image_size, 3)`; stack several with
        `np.stack` to make a batch.
    """
    from PIL import Image

    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct!r}.")
    if interpolation not in _PIL_FILTERS:
        raise ValueError(
            f"`interpolation` must be one of {sorted(_PIL_FILTERS)}, got {interpolation!r}."
        )
    resample = getattr(Image.Resampling, _PIL_FILTERS[interpolation])
    planes = _pil_planes(image)
    width, height = planes[0].size
    new_width, new_height = _shorter_side_size(width, height, math.floor(image_size / crop_pct))
    if (new_width, new_height) != (width, height):
        planes = [plane.resize((new_width, new_height), resample) for plane in planes]
    # torchvision's CenterCrop offsets: round((size - crop) / 2), Python's round.
    top = int(round((new_height - image_size) / 2.0))
    left = int(round((new_width - image_size) / 2.0))
    box = (left, top, left + image_size, top + image_size)
    arrays = [np.asarray(plane.crop(box), dtype=np.float32) for plane in planes]
    return arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)


def _shorter_side_size(width, height, size):
    # torchvision.transforms.Resize(int): the shorter side becomes `size`, the longer is truncated.
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _pil_planes(image):
    """One RGB PIL image for 8-bit input, or three float ("F") planes for float arrays."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return [opened.convert("RGB")]
    if isinstance(image, Image.Image):
        return [image.convert("RGB")]
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"`image` must be an RGB array of shape (height, width, 3), got shape {array.shape}."
        )
    if array.dtype == np.uint8:
        return [Image.fromarray(array, "RGB")]
    if np.issubdtype(array.dtype, np.floating):
        return [
            Image.fromarray(np.ascontiguousarray(array[..., c], np.float32), "F")
            for c in range(3)
        ]
    raise ValueError(
        f"`image` arrays must be uint8 or float in [0, 255], got dtype {array.dtype}."
    )
