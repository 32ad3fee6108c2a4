"""Files written by keras_gmlp before GMLPBlock split its first projection (commit 8eecd42) load
with today's code and compute what they computed then.

The fixtures and the outputs they are compared with were written by
tests/fixtures/make_legacy_fixtures.py running on commit 8eecd42's code, so the truth here is
the old code's own output, not anything this checkout computes.
"""

import os
import shutil

import h5py
import keras
import keras_hub
import numpy as np
import pytest

from keras_gmlp.layers import legacy
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_8eecd42")
INPUTS = dict(np.load(os.path.join(FIXTURES, "inputs.npz")))
OUTPUTS = dict(np.load(os.path.join(FIXTURES, "outputs.npz")))
TEXT = {k: INPUTS[k] for k in ("token_ids", "padding_mask")}
MLM = dict(TEXT, mask_positions=INPUTS["mask_positions"])


def _assert_old_outputs(got, name):
    # The old code applied the bias inside its fused kernels, the new one in the Dense layer:
    # the same sums in another order, float32 rounding apart.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), OUTPUTS[name], rtol=1e-5, atol=1e-5)


def _h5_groups(path):
    """The paths of the arrays in an h5 weights file (Keras also writes empty groups, with the
    layer's name, for layers without weights, like the block's legacy loader)."""
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_the_fixtures_hold_the_old_layout():
    # Otherwise the tests below would not test loading an old file.
    names = _h5_groups(os.path.join(FIXTURES, "masked_lm_preset", "model.weights.h5"))
    assert any(legacy.OLD_NAME in name for name in names)
    assert not any("channel_projection_u" in name for name in names)


def test_old_keras_file_of_an_amlp_text_backbone(tmp_path):
    model = keras.saving.load_model(os.path.join(FIXTURES, "text_backbone.keras"))
    assert isinstance(model, GMLPBackbone) and model.tiny_attention_dim == 4
    _assert_old_outputs(model(TEXT), "text_backbone")
    # Saved again, it is a file of the new layout with the same outputs.
    path = str(tmp_path / "resaved.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(TEXT)),
                                  keras.ops.convert_to_numpy(model(TEXT)))


def test_old_keras_file_of_an_image_classifier():
    model = keras.saving.load_model(os.path.join(FIXTURES, "image_classifier.keras"))
    assert isinstance(model, GMLPImageClassifier)
    _assert_old_outputs(model(INPUTS["images"]), "image_classifier")


def test_old_preset_directory(tmp_path):
    preset = os.path.join(FIXTURES, "masked_lm_preset")
    _assert_old_outputs(GMLPMaskedLM.from_preset(preset)(MLM), "masked_lm")
    _assert_old_outputs(keras_hub.models.MaskedLM.from_preset(preset)(MLM), "masked_lm")
    backbone = GMLPBackbone.from_preset(preset)
    _assert_old_outputs(backbone(TEXT), "masked_lm_backbone")
    backbone.save_to_preset(str(tmp_path / "new"))
    names = _h5_groups(str(tmp_path / "new" / "model.weights.h5"))
    assert any("channel_projection_u" in n for n in names) and not any(legacy.OLD_NAME in n for n in names)
    _assert_old_outputs(GMLPBackbone.from_preset(str(tmp_path / "new"))(TEXT), "masked_lm_backbone")


def test_old_trainer_checkpoint_initialises_a_fine_tuning_backbone():
    # What `trainers.finetune_text_classifier --init_checkpoint=<old pretraining run>` does.
    from types import SimpleNamespace

    from trainers.finetune_text_classifier import TextClassificationTask

    backbone = GMLPBackbone(vocabulary_size=50, num_layers=2, hidden_dim=8, ffn_dim=16, sequence_length=8)
    task = TextClassificationTask(SimpleNamespace(
        init_checkpoint=os.path.join(FIXTURES, "trainer_checkpoint", "ckpt-1")))
    task.initialize_from_pretrained(SimpleNamespace(backbone=backbone))
    _assert_old_outputs(backbone(TEXT), "masked_lm_backbone")


def test_split_helpers_round_trip():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(4, 6)), rng.normal(size=6)
    values = legacy.split_values({"block_0/channel_projection_in/kernel": kernel,
                                  "block_0/channel_projection_in/bias": bias, "head/kernel": kernel})
    np.testing.assert_array_equal(values["block_0/channel_projection_u/kernel"], kernel[:, :3])
    np.testing.assert_array_equal(values["block_0/channel_projection_v/bias"], bias[3:])
    assert values["head/kernel"] is kernel
    assert legacy.old_source("block_0__channel_projection_v__kernel", "__") == (
        "block_0__channel_projection_in__kernel", 1)
    listed = legacy.split_weight_list(
        ["a/channel_projection_in/kernel", "a/channel_projection_in/bias", "b"], [kernel, bias, 7])
    np.testing.assert_array_equal(listed[2], kernel[:, 3:])
    assert listed[-1] == 7 and len(listed) == 5
    with pytest.raises(ValueError, match="odd number of columns"):
        legacy.split_projection(np.zeros((2, 5)))


def test_a_file_with_both_layouts_or_a_quantized_old_block_is_refused(tmp_path):
    preset = str(tmp_path / "preset")
    shutil.copytree(os.path.join(FIXTURES, "masked_lm_preset"), preset)
    with h5py.File(os.path.join(preset, "model.weights.h5"), "a") as f:
        old = [name for name in _h5_list(f) if name.endswith(f"{legacy.OLD_NAME}/vars")][0]
        f.copy(old, old.replace(legacy.OLD_NAME, "channel_projection_u"))
        f[old.replace(legacy.OLD_NAME, "channel_projection_u")]["2"] = np.zeros(3)
    # Keras reports the last error of an object it reached twice (here "expected 2 variables,
    # but received 0" on its second path): it fails, which is the point.
    with pytest.raises(ValueError, match="channel_projection_u"):
        GMLPBackbone.from_preset(preset)
    with h5py.File(os.path.join(preset, "model.weights.h5"), "a") as f:
        del f[old.replace(legacy.OLD_NAME, "channel_projection_u").rsplit("/", 1)[0]]
        f[old]["2"] = np.ones(16, "float32")  # an int8 model's kernel scale
    with pytest.raises(ValueError, match="call `quantize` again"):
        GMLPBackbone.from_preset(preset)


def _h5_list(f):
    names = []
    f.visit(names.append)
    return names
