"""keras-hub's own test harness (`keras_hub/src/tests/test_case.py`, shipped in the wheel) on
keras_gmlp's backbones, tasks, tokenizer and preprocessors, plus keras-hub's generic entry
points on preset directories these tests write.

Where the harness cannot apply to gMLP the test says why:
- `run_vision_backbone_test`'s channels_first pass: gMLP's patch stem is channels-last (as
  timm's), and TensorFlow on CPU has no channels_first convolution, so the harness itself skips
  it here.
- `run_precision_test` is run on the backbones only: the tasks end in a float32 logits layer on
  purpose (stable losses under mixed precision), which the harness' "every sublayer computes in
  the policy's dtype" check would flag.
"""

import numpy as np
import pytest
from keras import ops

import keras
import keras_hub
from keras_hub.src.tests.test_case import TestCase

from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPMaskedLMPreprocessor
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPTextClassifierPreprocessor
from keras_gmlp.models import GMLPTokenizer
from keras_gmlp.models import GMLPVisionBackbone
from keras_gmlp.models import GMLPImageClassifierPreprocessor
from keras_gmlp.models import GMLPImageConverter

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox",
              "jumps", "over", "lazy", "dog", "a", "cat", "##s", "run", "and", "sleep", "."]
N = 8
TEXT_KW = dict(vocabulary_size=len(VOCABULARY), num_layers=2, hidden_dim=8, ffn_dim=16,
               sequence_length=N)
VISION_KW = dict(image_shape=(8, 8, 3), patch_size=4, num_layers=2, hidden_dim=8, ffn_dim=16)
TEXTS = ["the quick brown fox", "jumps over the lazy dog", "a cat runs", "the dog sleeps ."]


def token_inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, len(VOCABULARY), (batch, N)).astype("int32")
    mask = np.ones((batch, N), "int32")
    ids[0, -3:], mask[0, -3:] = 0, 0
    return {"token_ids": ids, "padding_mask": mask}


def images(batch=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, 8, 8, 3)).astype("float32")


def tokenizer():
    return GMLPTokenizer(vocabulary=VOCABULARY)


# Deterministic masking (every token masked, always with [MASK]) so that run_task_test's
# predict-on-strings and predict-on-a-dataset see the same inputs.
DETERMINISTIC_MASKING = dict(mask_selection_rate=1.0, mask_selection_length=N,
                             mask_token_rate=1.0, random_token_rate=0.0)


class BackboneHarness(TestCase):
    def test_text_backbone(self):
        self.run_backbone_test(cls=GMLPBackbone, init_kwargs=dict(TEXT_KW),
                               input_data=token_inputs(), expected_output_shape=(2, N, 8))

    def test_amlp_causal_text_backbone(self):
        self.run_backbone_test(cls=GMLPBackbone,
                               init_kwargs=dict(TEXT_KW, tiny_attention_dim=4, causal=True),
                               input_data=token_inputs(), expected_output_shape=(2, N, 8),
                               run_quantization_check=False)

    def test_vision_backbone(self):
        # Input as a tensor: Keras' Rescaling layer cannot compute_output_spec from NumPy.
        self.run_vision_backbone_test(cls=GMLPVisionBackbone, init_kwargs=dict(VISION_KW),
                                      input_data=ops.convert_to_tensor(images()),
                                      expected_output_shape=(2, 4, 8))

    def test_model_saving(self):
        self.run_model_saving_test(cls=GMLPBackbone, init_kwargs=dict(TEXT_KW), input_data=token_inputs())
        self.run_model_saving_test(cls=GMLPVisionBackbone, init_kwargs=dict(VISION_KW), input_data=images())


class TaskHarness(TestCase):
    def test_masked_lm(self):
        preprocessor = GMLPMaskedLMPreprocessor(tokenizer(), sequence_length=N, **DETERMINISTIC_MASKING)
        init_kwargs = {"backbone": GMLPBackbone(**TEXT_KW), "preprocessor": preprocessor}
        self.run_task_test(cls=GMLPMaskedLM, init_kwargs=init_kwargs, train_data=(TEXTS,),
                           expected_output_shape=(4, N, len(VOCABULARY)))
        self.run_model_saving_test(cls=GMLPMaskedLM, init_kwargs=init_kwargs,
                                   input_data=preprocessor(TEXTS)[0])

    def test_text_classifier(self):
        preprocessor = GMLPTextClassifierPreprocessor(tokenizer(), sequence_length=N)
        init_kwargs = {"backbone": GMLPBackbone(**TEXT_KW), "num_classes": 3, "preprocessor": preprocessor}
        self.run_task_test(cls=GMLPTextClassifier, init_kwargs=init_kwargs,
                           train_data=(TEXTS, np.array([0, 1, 2, 1]), np.array([1.0, 1.0, 0.5, 1.0])),
                           expected_output_shape=(4, 3))
        self.run_model_saving_test(cls=GMLPTextClassifier, init_kwargs=init_kwargs,
                                   input_data=preprocessor(TEXTS))

    def test_image_classifier(self):
        preprocessor = GMLPImageClassifierPreprocessor(GMLPImageConverter(image_size=(8, 8)))
        init_kwargs = {"backbone": GMLPVisionBackbone(**VISION_KW), "num_classes": 3,
                       "preprocessor": preprocessor}
        self.run_task_test(cls=GMLPImageClassifier, init_kwargs=init_kwargs,
                           train_data=(images(4), np.array([0, 1, 2, 1])), expected_output_shape=(4, 3))
        self.run_model_saving_test(cls=GMLPImageClassifier, init_kwargs=init_kwargs, input_data=images())


class PreprocessorHarness(TestCase):
    def test_tokenizer(self):
        self.run_preprocessing_layer_test(cls=GMLPTokenizer, init_kwargs={"vocabulary": VOCABULARY},
                                          input_data=["the quick fox", "a cat runs"],
                                          expected_output=[[5, 6, 8], [13, 14, 16, 15]],
                                          expected_detokenize_output=["the quick fox", "a cat runs"])

    def test_text_classifier_preprocessor(self):
        self.init_kwargs = {"tokenizer": tokenizer(), "sequence_length": N}  # the harness reads it
        self.run_preprocessor_test(
            cls=GMLPTextClassifierPreprocessor, init_kwargs=self.init_kwargs,
            input_data=(["the quick fox", "a cat runs"], [1, 0]),
            expected_output=({"token_ids": [[5, 6, 8, 0, 0, 0, 0, 0], [13, 14, 16, 15, 0, 0, 0, 0]],
                              "padding_mask": [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]},
                             [1, 0]))

    def test_masked_lm_preprocessor(self):
        self.init_kwargs = {"tokenizer": tokenizer(), "sequence_length": N, **DETERMINISTIC_MASKING}
        self.run_preprocessor_test(
            cls=GMLPMaskedLMPreprocessor, init_kwargs=self.init_kwargs,
            input_data=["the quick fox", "a cat runs"],
            expected_output=(
                {"token_ids": [[4, 4, 4, 0, 0, 0, 0, 0], [4, 4, 4, 4, 0, 0, 0, 0]],
                 "padding_mask": [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]],
                 "mask_positions": [[0, 1, 2, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 0, 0, 0]]},
                [[5, 6, 8, 0, 0, 0, 0, 0], [13, 14, 16, 15, 0, 0, 0, 0]],
                [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]))

    def test_serialization(self):
        for instance in (tokenizer(), GMLPTextClassifierPreprocessor(tokenizer(), sequence_length=N),
                         GMLPMaskedLMPreprocessor(tokenizer(), sequence_length=N, seed=3),
                         GMLPBackbone(**TEXT_KW), GMLPVisionBackbone(**VISION_KW),
                         GMLPBackbone(**TEXT_KW, dtype=keras.DTypePolicy("mixed_bfloat16"))):
            self.run_serialization_test(instance)


def write_text_preset(path, task="masked_lm"):
    backbone = GMLPBackbone(**TEXT_KW)
    if task == "masked_lm":
        model = GMLPMaskedLM(backbone, GMLPMaskedLMPreprocessor(tokenizer(), sequence_length=N))
    else:
        model = GMLPTextClassifier(backbone, 2, GMLPTextClassifierPreprocessor(tokenizer(), sequence_length=N))
    model.save_to_preset(str(path))
    return model


class PresetHarness(TestCase):
    def test_preset_directory(self):
        preset = self.get_temp_dir()
        saved = write_text_preset(preset)
        self.run_preset_test(cls=GMLPBackbone, preset=preset, input_data=token_inputs(),
                             expected_output=saved.backbone(token_inputs()))
        self.run_preset_test(cls=GMLPTextClassifier, preset=preset, input_data=token_inputs(4),
                             init_kwargs={"num_classes": 3}, expected_output_shape=(4, 3))


def test_keras_hub_generic_entry_points_load_a_preset_directory(tmp_path):
    saved = write_text_preset(tmp_path / "preset")
    preset = str(tmp_path / "preset")
    x = token_inputs()
    backbone = keras_hub.models.Backbone.from_preset(preset)
    assert type(backbone) is GMLPBackbone
    np.testing.assert_array_equal(ops.convert_to_numpy(backbone(x)), ops.convert_to_numpy(saved.backbone(x)))
    mlm = keras_hub.models.MaskedLM.from_preset(preset)
    assert type(mlm) is GMLPMaskedLM and type(mlm.preprocessor) is GMLPMaskedLMPreprocessor
    for a, b in zip(mlm.weights, saved.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    classifier = keras_hub.models.TextClassifier.from_preset(preset, num_classes=3)
    assert type(classifier) is GMLPTextClassifier and classifier.num_classes == 3
    assert type(classifier.preprocessor) is GMLPTextClassifierPreprocessor
    np.testing.assert_array_equal(ops.convert_to_numpy(classifier.backbone(x)),
                                  ops.convert_to_numpy(saved.backbone(x)))
    assert classifier.predict(TEXTS, verbose=0).shape == (4, 3)
    tokenizer_ = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    assert type(tokenizer_) is GMLPTokenizer and tokenizer_.get_vocabulary() == VOCABULARY
    same = GMLPMaskedLM.from_preset(preset)
    assert type(same) is GMLPMaskedLM


def test_text_classifier_preset_keeps_its_head_unless_num_classes_is_given(tmp_path):
    saved = write_text_preset(tmp_path / "preset", task="text_classifier")
    preset = str(tmp_path / "preset")
    restored = keras_hub.models.TextClassifier.from_preset(preset)
    np.testing.assert_array_equal(restored.predict(TEXTS, verbose=0), saved.predict(TEXTS, verbose=0))
    fresh = keras_hub.models.TextClassifier.from_preset(preset, num_classes=2)
    assert not np.array_equal(ops.convert_to_numpy(fresh.head.kernel), ops.convert_to_numpy(saved.head.kernel))


def test_upload_preset_validation_accepts_a_saved_preset(tmp_path):
    from keras_hub.src.utils import preset_utils

    write_text_preset(tmp_path / "preset")
    # The validation upload_preset runs before contacting any hub; it raises on a bad directory.
    preset_utils._validate_backbone(str(tmp_path / "preset"))
    with pytest.raises(FileNotFoundError):
        preset_utils._validate_backbone(str(tmp_path))
    # A URI scheme no hub owns: validation passes, then upload_preset refuses the URI itself.
    with pytest.raises(ValueError, match="Unknown URI"):
        keras_hub.upload_preset("nohub://user/model", str(tmp_path / "preset"))


def test_named_configurations_still_build_by_name():
    assert GMLPBackbone.from_preset("gmlp_tiny", num_layers=1).num_layers == 1
    classifier = GMLPTextClassifier.from_preset("gmlp_tiny", num_classes=3, num_layers=1, vocabulary_size=50)
    assert classifier.num_classes == 3 and classifier.backbone.vocabulary_size == 50
    image = GMLPImageClassifier.from_preset("gmlp_tiny4_32", num_classes=10, num_layers=1)
    assert image.backbone.num_layers == 1 and image.num_classes == 10


def test_presets_list_the_named_configurations_in_keras_hubs_format():
    from keras_gmlp.models import TEXT_PRESETS, VISION_PRESETS

    assert list(GMLPBackbone.presets) == list(TEXT_PRESETS)
    assert list(GMLPVisionBackbone.presets) == list(VISION_PRESETS)
    # keras-hub's Task.presets are its backbone's.
    assert list(GMLPTextClassifier.presets) == list(GMLPMaskedLM.presets) == list(TEXT_PRESETS)
    assert list(GMLPImageClassifier.presets) == list(VISION_PRESETS)
    entry = GMLPVisionBackbone.presets["gmlp_s16_224"]
    assert entry["config"] == VISION_PRESETS["gmlp_s16_224"]
    assert "random weights" in entry["metadata"]["description"]
    # timm's gmlp_*16_224 parameter counts, their 1000-class heads (d * 1000 + 1000) included.
    timm = {"gmlp_ti16_224": 5_867_328, "gmlp_s16_224": 19_422_656, "gmlp_b16_224": 73_075_392}
    for name, count in timm.items():
        d = VISION_PRESETS[name]["hidden_dim"]
        assert GMLPVisionBackbone.presets[name]["metadata"]["params"] + d * 1000 + 1000 == count


@pytest.mark.parametrize("cls, kwargs", [
    (GMLPBackbone, TEXT_KW),
    (GMLPBackbone, dict(TEXT_KW, tiny_attention_dim=4)),
    (GMLPVisionBackbone, dict(VISION_KW, image_shape=(8, 12, 1))),
])
def test_preset_parameter_counts_match_the_built_models(cls, kwargs):
    from keras_gmlp.models.presets import parameter_count

    assert parameter_count(kwargs) == cls(**kwargs).count_params()
