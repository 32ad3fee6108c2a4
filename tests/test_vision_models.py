import re

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPVisionBackbone
from weights import load_block

TIMM_PARAMETER_COUNTS = {
    "gmlp_ti16_224": 5_867_328,
    "gmlp_s16_224": 19_422_656,
    "gmlp_b16_224": 73_075_392,
}


def small_classifier(**kwargs):
    backbone = GMLPVisionBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, hidden_dim=8, ffn_dim=16, **kwargs
    )
    return GMLPImageClassifier(backbone, num_classes=5)


def test_classifier_matches_numpy(rng):
    model = small_classifier()
    blocks = model.backbone.blocks
    params = [ref.random_block_params(rng, 8, 16, 16) for _ in blocks]
    for block, p in zip(blocks, params):
        load_block(block, p)
    images = rng.uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    stem = model.backbone.patch_embedding.projection
    x = ref.patch_embed(images / 127.5 - 1.0, *(keras.ops.convert_to_numpy(w) for w in stem.weights), 4)
    for p in params:
        x = ref.gmlp_block(x, p)
    norm = model.backbone.final_norm
    x = ref.layer_norm(x, *(keras.ops.convert_to_numpy(w) for w in norm.weights), 1e-6).mean(1)
    expected = ref.dense(x, *(keras.ops.convert_to_numpy(w) for w in model.head.weights))
    np.testing.assert_allclose(model(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", sorted(TIMM_PARAMETER_COUNTS))
def test_presets_have_timms_parameter_counts(preset):
    model = GMLPImageClassifier.from_preset(preset, num_classes=1000)
    assert model.count_params() == TIMM_PARAMETER_COUNTS[preset]
    assert model.backbone.num_patches == 196


def test_bad_image_shape_raises():
    with pytest.raises(ValueError, match=r"`image_shape`=\(100, 100, 3\): expected height and width multiples of `patch_size`=16"):
        GMLPVisionBackbone.from_preset("gmlp_ti16_224", image_shape=(100, 100, 3))


VISION_KW = dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, hidden_dim=8, ffn_dim=16)


@pytest.mark.parametrize("name, value, expected", [
    ("patch_size", 0, "a positive int"),  # was ZeroDivisionError
    ("num_layers", -2, "a positive int"),  # was a backbone of 0 blocks
    ("layer_norm_epsilon", -1.0, "a finite float > 0"),  # was NaN outputs
    ("ffn_dim", 15, "an even int >= 2"),
    ("drop_path_rate", 1.0, "a float in [0, 1)"),
    ("image_shape", (16, 16), "three positive ints"),
    ("include_rescaling", "no", "True or False"),
    ("dtype", "float33", "a dtype policy"),
    ("dropuot", 0.5, "no such argument of GMLPVisionBackbone"),
])
def test_vision_backbone_rejects_bad_arguments_before_building(name, value, expected, monkeypatch):
    from keras_gmlp.models import vision_backbone

    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")

    monkeypatch.setattr(vision_backbone, "PatchEmbedding", no_layers)
    monkeypatch.setattr(vision_backbone, "GMLPBlock", no_layers)
    kwargs = {**VISION_KW, name: value}
    message = re.escape(f"`{name}`={value!r}: expected ") + ".*" + re.escape(expected)
    with pytest.raises(ValueError, match=message):
        GMLPVisionBackbone.validate_arguments(**kwargs)
    with pytest.raises(ValueError, match=f"`{name}`="):
        GMLPVisionBackbone(**kwargs)


@pytest.mark.parametrize("preset", ["gmlp_tiny4_32", "gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224"])
def test_vision_presets_pass_validate_arguments(preset):
    from keras_gmlp.models.presets import VISION_PRESETS

    GMLPVisionBackbone.validate_arguments(**VISION_PRESETS[preset])


def test_image_classifier_rejects_a_text_backbone():
    from keras_gmlp.models import GMLPBackbone

    text = GMLPBackbone(vocabulary_size=10, num_layers=1, hidden_dim=8, ffn_dim=8, sequence_length=4)
    with pytest.raises(ValueError, match="`backbone`='<GMLPBackbone>': expected a GMLPVisionBackbone"):
        GMLPImageClassifier(text, 2)
