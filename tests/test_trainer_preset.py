"""MODEL_DIR/preset: written whole or not at all, read back by keras-hub's generic loaders."""

import os

import keras_hub
import numpy as np
import pytest

from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPTextClassifierPreprocessor
from keras_gmlp.models import GMLPTokenizer
from trainers.core import preset

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the dog sat", "a cat ran"] * 4


def _classifier(seed):
    import keras

    keras.utils.set_random_seed(seed)
    tokenizer = GMLPTokenizer.from_corpus(TEXTS, 40)
    backbone = GMLPBackbone(vocabulary_size=tokenizer.vocabulary_size(), sequence_length=8,
                            num_layers=1, hidden_dim=16, ffn_dim=32)
    return (GMLPTextClassifier(backbone, 2),
            GMLPTextClassifierPreprocessor(tokenizer, sequence_length=8))


def _predict(preset_dir, texts):
    return keras_hub.models.TextClassifier.from_preset(preset_dir).predict(texts, verbose=0)


def test_preset_holds_the_model_and_its_preprocessor(tmp_path):
    model, preprocessor = _classifier(seed=1)
    path = preset.write_preset(model, preprocessor, str(tmp_path))
    assert path == os.path.join(str(tmp_path), "preset") and preset.is_preset_dir(path)
    expected = model.predict(preprocessor(TEXTS[:3]), verbose=0)
    np.testing.assert_allclose(_predict(path, TEXTS[:3]), expected, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["preset"]  # no staging left


def test_a_failed_write_keeps_the_previous_preset(tmp_path, monkeypatch):
    first, preprocessor = _classifier(seed=1)
    preset.write_preset(first, preprocessor, str(tmp_path))
    before = _predict(os.path.join(str(tmp_path), "preset"), TEXTS[:2])
    second, _ = _classifier(seed=2)

    def fail(self, preset_dir):
        raise OSError("disk full")

    monkeypatch.setattr(GMLPTextClassifierPreprocessor, "save_to_preset", fail)
    with pytest.raises(OSError, match="disk full"):
        preset.write_preset(second, preprocessor, str(tmp_path))
    monkeypatch.undo()
    np.testing.assert_array_equal(_predict(os.path.join(str(tmp_path), "preset"), TEXTS[:2]),
                                  before)
    assert sorted(os.listdir(tmp_path)) == ["preset"]
    # A later write replaces it with the new model.
    preset.write_preset(second, preprocessor, str(tmp_path))
    after = _predict(os.path.join(str(tmp_path), "preset"), TEXTS[:2])
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, second.predict(preprocessor(TEXTS[:2]), verbose=0),
                               atol=1e-6)


def test_init_checkpoint_accepts_a_preset_only_when_whole(tmp_path):
    from trainers.core import flags as flags_lib

    model, preprocessor = _classifier(seed=1)
    path = preset.write_preset(model, preprocessor, str(tmp_path))
    assert flags_lib._checkpoint_exists(path)
    os.remove(os.path.join(path, preset.WEIGHTS_FILE))
    assert not flags_lib._checkpoint_exists(path)


def test_stages_of_a_killed_preset_write_are_cleaned_or_restored(tmp_path):
    from trainers.core import run_dir

    model, preprocessor = _classifier(seed=1)
    path = preset.write_preset(model, preprocessor, str(tmp_path))
    # Killed between the two renames: only the retired copy of the preset is left.
    os.rename(path, os.path.join(str(tmp_path), ".preset-retired-0"))
    os.makedirs(os.path.join(str(tmp_path), ".preset-staging-1"))
    run_dir.remove_partial_saves(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["preset"] and preset.is_preset_dir(path)
