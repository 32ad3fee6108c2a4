"""Another image resolution: a vision preset's spatial weights resampled to a new patch grid."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPVisionBackbone
from keras_gmlp.models.spatial_resampling import interpolation_matrix
from keras_gmlp.models.spatial_resampling import resample_spatial_weights

VISION_KW = dict(patch_size=4, num_layers=2, hidden_dim=8, ffn_dim=16)


def centres(grid):
    """Patch centres of a grid in image coordinates [0, 1]^2, row-major."""
    h, w = grid
    y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return np.stack([y.ravel(), x.ravel()], -1)


def gaussian_operator(grid, sigma=0.3):
    """W[m, j] = g(|p_m - p_j|) * (area of a patch): the quadrature of a smooth integral kernel."""
    p = centres(grid)
    squared = ((p[:, None] - p[None]) ** 2).sum(-1)
    return np.exp(-squared / (2 * sigma**2)) / (grid[0] * grid[1])


def smooth_bias(grid):
    p = centres(grid)
    return 1.0 + 0.3 * np.sin(2 * p[:, 0]) * np.cos(3 * p[:, 1])


def sgus(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, SpatialGatingUnit)]


def randomize_spatial_weights(model, rng):
    # The initial W (~1e-6) and b (ones) would make any resampling look right.
    for sgu in sgus(model):
        n = sgu.spatial_bias.shape[0]
        sgu.spatial_kernel.assign(rng.normal(0, 0.2, (n, n)).astype("float32"))
        sgu.spatial_bias.assign(rng.normal(1, 0.2, (n,)).astype("float32"))


@pytest.fixture(scope="module")
def preset_16(tmp_path_factory):
    """A GMLPImageClassifier preset saved at 16x16 (a 4x4 patch grid), random spatial weights."""
    keras.utils.set_random_seed(1)
    model = GMLPImageClassifier(GMLPVisionBackbone(image_shape=(16, 16, 3), **VISION_KW), 5)
    randomize_spatial_weights(model, np.random.default_rng(1))
    path = str(tmp_path_factory.mktemp("preset_16"))
    model.save_to_preset(path)
    return path, model


@pytest.mark.parametrize("source, target", [(4, 8), (8, 4), (3, 7), (14, 24), (24, 14)])
def test_interpolation_matrix_is_jax_bicubic_resize(source, target):
    jax = pytest.importorskip("jax")
    expected = jax.image.resize(np.eye(source, dtype="float32"), (target, source), "bicubic",
                                antialias=True)
    np.testing.assert_allclose(interpolation_matrix(source, target), np.asarray(expected),
                               atol=2e-6)


def test_smooth_kernel_resamples_to_the_analytic_operator():
    # Resampled W vs the same Gaussian kernel sampled on the new grid (with the new patch area).
    # Away from the border (target centres >= 2 source patches in, where the cubic's support is
    # whole) the error is interpolation error and shrinks ~8x per halving of the source spacing
    # (third order): 6.6e-3 at 8x8 -> 16x16, 7.3e-4 at 16x16 -> 32x32. At the border the kernel
    # is extrapolated from renormalised weights (as ViT position-embedding interpolation does),
    # 3.1e-2 here. Without the patch-area factor the error would be 300%.
    def errors(source, target):
        kernel, bias = resample_spatial_weights(gaussian_operator(source), smooth_bias(source),
                                                source, target)
        expected = gaussian_operator(target)
        p = centres(target)
        edge = 2.0 / np.array(source)
        inner = np.all((p >= edge) & (p <= 1 - edge), -1)
        scale = np.abs(expected).max()
        return (np.abs(kernel - expected)[np.ix_(inner, inner)].max() / scale,
                np.abs(kernel - expected).max() / scale,
                np.abs(bias - smooth_bias(target)).max())

    coarse_inner, _, _ = errors((8, 8), (16, 16))
    inner, overall, bias_error = errors((16, 16), (32, 32))
    assert inner <= 1.5e-3
    assert overall <= 5e-2
    assert bias_error <= 1e-2  # 6.1e-3, at the border (b varies by +-0.3)
    assert inner <= coarse_inner / 4
    # A non-square grid, shrinking on one axis and growing on the other.
    _, overall, _ = errors((12, 16), (16, 12))
    assert overall <= 5e-2


def test_same_grid_returns_the_weights_unchanged(rng):
    kernel = rng.normal(size=(12, 12)).astype("float32")
    bias = rng.normal(size=(12,)).astype("float32")
    new_kernel, new_bias = resample_spatial_weights(kernel, bias, (3, 4), (3, 4))
    np.testing.assert_array_equal(new_kernel, kernel)
    np.testing.assert_array_equal(new_bias, bias)


def test_resample_rejects_weights_that_do_not_fit_the_grid():
    with pytest.raises(ValueError, match=r"`kernel shape`=\(12, 12\): expected \(16, 16\)"):
        resample_spatial_weights(np.zeros((12, 12)), np.zeros(12), (4, 4), (8, 8))
    with pytest.raises(ValueError, match=r"`target_grid`=\(8, 0\): expected \(height, width\)"):
        resample_spatial_weights(np.zeros((16, 16)), np.zeros(16), (4, 4), (8, 0))


def test_same_resolution_reproduces_the_outputs_exactly(preset_16, rng):
    path, model = preset_16
    images = rng.uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    for loaded in (keras_hub.models.ImageClassifier.from_preset(path),
                   keras_hub.models.ImageClassifier.from_preset(path, image_shape=(16, 16, 3))):
        np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


@pytest.mark.parametrize("load", ["keras_hub.ImageClassifier", "GMLPImageClassifier",
                                  "GMLPVisionBackbone"])
def test_from_preset_at_another_resolution_resamples_the_spatial_weights(preset_16, load):
    path, model = preset_16
    image_shape = (32, 24, 3)  # 8x6 patches
    loaded = {
        "keras_hub.ImageClassifier": lambda: keras_hub.models.ImageClassifier.from_preset(
            path, image_shape=image_shape),
        "GMLPImageClassifier": lambda: GMLPImageClassifier.from_preset(
            path, image_shape=image_shape),
        "GMLPVisionBackbone": lambda: GMLPVisionBackbone.from_preset(
            path, image_shape=image_shape),
    }[load]()
    backbone = loaded if load == "GMLPVisionBackbone" else loaded.backbone
    assert backbone.image_shape == image_shape and backbone.patch_grid == (8, 6)
    for mine, theirs in zip(sgus(backbone), sgus(model.backbone), strict=True):
        kernel, bias = resample_spatial_weights(
            keras.ops.convert_to_numpy(theirs.spatial_kernel),
            keras.ops.convert_to_numpy(theirs.spatial_bias), (4, 4), (8, 6))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine.spatial_kernel), kernel)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine.spatial_bias), bias)
    spatial = {id(w) for sgu in sgus(backbone) for w in (sgu.spatial_kernel, sgu.spatial_bias)}
    others = [(a, b) for a, b in zip(backbone.weights, model.backbone.weights) if id(a) not in spatial]
    assert len(spatial) == 4 and len(others) == len(model.backbone.weights) - 4
    for mine, theirs in others:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))
    if load != "GMLPVisionBackbone":  # the task's head comes from task.weights.h5
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.head.kernel),
                                      keras.ops.convert_to_numpy(model.head.kernel))


def test_load_weights_with_an_explicit_source_image_shape(preset_16, tmp_path):
    _, model = preset_16
    path = str(tmp_path / "backbone.weights.h5")  # no config.json beside it
    model.backbone.save_weights(path)
    backbone = GMLPVisionBackbone(image_shape=(32, 32, 3), **VISION_KW)
    with pytest.raises(ValueError):  # Keras' own shape check: the grid cannot be guessed
        backbone.load_weights(path)
    backbone.load_weights(path, source_image_shape=(16, 16, 3))
    theirs = sgus(model.backbone)[0]
    kernel, _ = resample_spatial_weights(keras.ops.convert_to_numpy(theirs.spatial_kernel),
                                         keras.ops.convert_to_numpy(theirs.spatial_bias),
                                         (4, 4), (8, 8))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sgus(backbone)[0].spatial_kernel),
                                  kernel)


def test_fine_tuning_at_the_new_resolution_lowers_the_loss(preset_16, rng):
    path, _ = preset_16
    model = keras_hub.models.ImageClassifier.from_preset(path, image_shape=(32, 32, 3))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    images = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, size=(16,))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = float(loss(labels, model(images)))
    for _ in range(8):
        model.train_on_batch(images, labels)
    after = float(loss(labels, model(images)))
    assert np.isfinite(before) and after < 0.8 * before, (before, after)


def test_an_image_shape_the_patch_size_does_not_divide_raises_naming_it(preset_16):
    path, _ = preset_16
    message = r"`image_shape`=\(30, 32, 3\): expected height and width multiples of `patch_size`=4"
    with pytest.raises(ValueError, match=message):
        keras_hub.models.ImageClassifier.from_preset(path, image_shape=(30, 32, 3))
    with pytest.raises(ValueError, match=message):
        GMLPVisionBackbone.from_preset(path, image_shape=(30, 32, 3))


def test_the_presets_preprocessor_follows_the_new_resolution(tmp_path, rng):
    from keras_gmlp.models import GMLPImageClassifierPreprocessor
    from keras_gmlp.models import GMLPImageConverter

    preprocessor = GMLPImageClassifierPreprocessor(
        image_converter=GMLPImageConverter(image_size=(16, 16)))
    model = GMLPImageClassifier(GMLPVisionBackbone(image_shape=(16, 16, 3), **VISION_KW), 5,
                                preprocessor=preprocessor)
    model.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path), image_shape=(32, 32, 3))
    assert loaded.preprocessor.image_size == (32, 32)  # was the preset's (16, 16): predict failed
    images = rng.uniform(0, 255, size=(2, 40, 40, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               loaded(loaded.preprocessor(images)), rtol=1e-5, atol=1e-6)
