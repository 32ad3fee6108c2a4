import keras
import numpy as np
import pytest

import model_zoo
from keras_gmlp.layers import GMLPBlock


def targets(model_type, x, rng):
    if model_type == "masked_lm":
        return rng.integers(0, model_zoo.VOCAB, size=x["mask_positions"].shape)
    return rng.integers(0, 2, size=len(x["token_ids"] if isinstance(x, dict) else x))


@pytest.mark.parametrize("model_type", ["masked_lm", "text_classifier", "image_classifier"])
def test_mixed_bfloat16_policy(model_type, rng):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = model_zoo.build(model_type)
    assert all(w.dtype == "float32" for w in model.weights)
    blocks = [l for l in model.backbone.layers if isinstance(l, GMLPBlock)]
    assert blocks and all(b.compute_dtype == "bfloat16" for b in blocks)
    x = model_zoo.inputs(model_type, rng)
    sequence = model.backbone(x if not isinstance(x, dict) else {k: x[k] for k in model.backbone.input})
    assert sequence.dtype == "bfloat16"
    assert model(x).dtype == "float32"
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), optimizer="adam")
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, targets(model_type, x, rng), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_explicit_dtype_argument_survives_serialization(rng):
    model = model_zoo.build("text_classifier", dtype="mixed_bfloat16")
    clone = type(model).from_config(model.get_config())
    assert clone.backbone.blocks[0].compute_dtype == "bfloat16"
    assert clone.backbone.blocks[0].variable_dtype == "float32"


@pytest.mark.parametrize("model_type", ["masked_lm", "text_classifier", "image_classifier"])
def test_backbone_dtype_reaches_the_model_policy_and_the_head(model_type):
    # Before: keras.Model ignored `dtype`, so backbone.dtype_policy stayed float32 and the
    # classifier heads, which follow it, computed in float32.
    model = model_zoo.build(model_type, dtype="mixed_bfloat16")
    assert model.backbone.dtype_policy.name == "mixed_bfloat16"
    assert model.dtype_policy.name == "mixed_bfloat16"
    if model_type != "masked_lm":  # the MLM head is float32 on purpose (see GMLPMaskedLM)
        assert model.head.compute_dtype == "bfloat16"


def test_per_backbone_mixed_float16_gets_loss_scaling():
    # Keras wraps the optimizer in a LossScaleOptimizer when the model's policy is
    # mixed_float16; before, only a global policy did.
    model = model_zoo.build("image_classifier", dtype="mixed_float16")
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
