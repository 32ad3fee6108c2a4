"""preprocess_image against timm's eval transform for gmlp_s16_224, from closed forms.

timm: Resize(floor(224 / 0.875) = 256) of the shorter side (longer side
int-truncated), CenterCrop(224) at offsets round((size - 224) / 2). A bicubic
(or any normalised symmetric) resampling reproduces a linear ramp exactly away
from the borders, so the crop of a resized ramp is known in closed form.
"""

import numpy as np
import pytest
from PIL import Image

from keras_gmlp.convert import preprocess_image


def ramp(height, width):
    """Three channels, each linear in (row, col) with different slopes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([0.15 * x + 0.25 * y + 10, 0.1 * x + 5, 0.3 * y + 1], axis=-1)


@pytest.mark.parametrize(
    "shape, resized, offsets",
    [
        ((512, 600), (256, 300), (16, 38)),
        ((600, 512), (300, 256), (38, 16)),
        # 256 * 400 / 300 = 341.3 -> 341; (341 - 224) / 2 = 58.5 rounds to even, 58.
        ((300, 400), (256, 341), (16, 58)),
        # 256 * 403 / 300 = 343.9 truncates to 343; 59.5 rounds to even, 60.
        ((300, 403), (256, 343), (16, 60)),
        ((100, 150), (256, 384), (16, 80)),  # upsampling
    ],
)
def test_resize_and_center_crop_of_a_ramp(shape, resized, offsets):
    (height, width), (new_height, new_width), (top, left) = shape, resized, offsets
    out = preprocess_image(ramp(height, width).astype(np.float32))
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # Output pixel (i, j) samples the input at its centre mapped back: (k + 0.5) * scale - 0.5.
    i, j = np.mgrid[0:224, 0:224].astype(np.float64)
    rows = (i + top + 0.5) * height / new_height - 0.5
    cols = (j + left + 0.5) * width / new_width - 0.5
    expected = np.stack([0.15 * cols + 0.25 * rows + 10, 0.1 * cols + 5, 0.3 * rows + 1], -1)
    # Antialiased downscaling by a non-integer factor samples the kernel off-centre, which moves
    # a ramp by < 0.01; a crop or size off by one output pixel moves it by >= 0.1.
    np.testing.assert_allclose(out, expected, atol=0.02)


def test_short_side_256_is_only_cropped_for_every_input_kind(rng, tmp_path):
    pixels = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)
    expected = pixels[16:240, 38:262].astype(np.float32)  # round(76 / 2) = 38
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    rgba = Image.fromarray(np.dstack([pixels, np.full((256, 300), 7, np.uint8)]), "RGBA")
    as_float = pixels.astype(np.float64)
    for image in (pixels, Image.fromarray(pixels), path, str(path), rgba, as_float):
        np.testing.assert_array_equal(preprocess_image(image), expected)


def test_uint8_input_rounds_like_the_float_path():
    # Smooth content: PIL's 8-bit path rounds and clips after each of its two 1-D passes, which
    # only stays within a pixel level of the float path where bicubic does not overshoot.
    y, x = np.mgrid[0:180, 0:240]
    pixels = np.stack(
        [127 + 100 * np.sin(x / 23.0), 127 + 100 * np.cos(y / 17.0), (x + y) * 0.5], -1
    ).round().astype(np.uint8)
    from_uint8 = preprocess_image(pixels)
    from_float = preprocess_image(pixels.astype(np.float32))
    # PIL resamples 8-bit images in fixed point and clips to [0, 255].
    np.testing.assert_allclose(from_uint8, np.clip(from_float, 0, 255), atol=1.0)
    assert from_uint8.min() >= 0 and from_uint8.max() <= 255


def test_bad_arguments_are_named():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"shape \(64, 64\)"):
        preprocess_image(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="int32"):
        preprocess_image(image.astype(np.int32))
    with pytest.raises(ValueError, match="crop_pct.*1.5"):
        preprocess_image(image, crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation.*'area'"):
        preprocess_image(image, interpolation="area")
    with pytest.raises(ValueError, match="image_size.*0"):
        preprocess_image(image, image_size=0)
