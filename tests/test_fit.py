"""Every model learns a toy task with a plain model.fit: the loss must go down."""

import keras
import numpy as np
import pytest

import model_zoo
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPMaskedLM


def fit_losses(model, x, y, sample_weight=None, epochs=15):
    history = model.fit(x, y, sample_weight=sample_weight, batch_size=16, epochs=epochs, verbose=0)
    return history.history["loss"]


def test_masked_lm_learns_to_copy_the_neighbour(rng):
    # Each sequence repeats one token; the masked token is recoverable from its neighbours.
    mlm = GMLPMaskedLM(model_zoo.text_backbone())
    mlm.compile(optimizer=keras.optimizers.Adam(3e-3))
    tokens = rng.integers(2, model_zoo.VOCAB, size=(64, 1)).repeat(model_zoo.N, axis=1).astype("int32")
    positions = rng.integers(0, model_zoo.N, size=(64, 1)).astype("int32")
    x = {
        "token_ids": np.where(np.arange(model_zoo.N) == positions, 1, tokens).astype("int32"),
        "padding_mask": np.ones_like(tokens),
        "mask_positions": positions,
    }
    losses = fit_losses(mlm, x, tokens[:, :1], sample_weight=np.ones((64, 1), "float32"), epochs=30)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("model_type", ["text_classifier", "image_classifier"])
def test_classifiers_learn_a_separable_task(model_type, rng):
    model = model_zoo.build(model_type)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = model_zoo.inputs(model_type, rng, batch=64)
    if model_type == "text_classifier":
        y = (x["token_ids"][:, 0] > model_zoo.VOCAB // 2).astype("int32")
    else:
        y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    losses = fit_losses(model, x, y)
    assert losses[-1] < 0.5 * losses[0]


def test_backbone_trains_under_fit_with_its_own_head(rng):
    backbone = model_zoo.text_backbone(causal=True)
    inputs = backbone.input
    logits = keras.layers.Dense(model_zoo.VOCAB)(backbone(inputs))
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = model_zoo.inputs("text_backbone", rng, batch=64)
    # Causal next-token target: predict the previous token (visible under the causal mask).
    y = np.roll(x["token_ids"], 1, axis=1)
    losses = fit_losses(model, x, y, sample_weight=x["padding_mask"].astype("float32"))
    assert losses[-1] < 0.7 * losses[0]
    assert isinstance(backbone, GMLPBackbone)


@pytest.mark.parametrize("model_type", ["masked_lm", "text_classifier", "image_classifier"])
def test_default_recipe_decays_kernels_but_not_layer_norm_or_biases(model_type):
    # With zero gradients Adam's step is 0, so AdamW changes w only by its decoupled decay:
    # w <- w * (1 - lr * weight_decay). LayerNorm scales/offsets and biases must not move.
    model = model_zoo.build(model_type)  # compiled by default with the recipe
    optimizer = model.optimizer
    variables = model.trainable_variables
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in variables])
    factor = 1 - float(keras.ops.convert_to_numpy(optimizer.learning_rate)) * optimizer.weight_decay
    decayed, kept = [], []
    for v, old in zip(variables, before):
        new = keras.ops.convert_to_numpy(v)
        excluded = v.path.split("/")[-1] in ("gamma", "beta") or v.path.endswith("bias")
        if excluded:
            np.testing.assert_array_equal(new, old, err_msg=v.path)
            kept.append(v.path)
        else:
            np.testing.assert_allclose(new, old * factor, rtol=1e-6, err_msg=v.path)
            decayed.append(v.path)
    assert decayed and kept and any(p.endswith("spatial_bias") for p in kept)


def test_trainers_use_the_same_recipe():
    from types import SimpleNamespace

    from keras_gmlp.models import recipe
    from trainers.core import optimization

    flags = SimpleNamespace(weight_decay=0.01, adam_beta_1=0.9, adam_beta_2=0.98, adam_epsilon=1e-6)
    schedule = optimization.WarmupDecay(1e-3, 100, 10)
    optimizer = optimization.make_optimizer(flags, schedule)
    assert isinstance(optimizer, optimization.PreReducedAdamW)
    assert optimization.WarmupDecay is recipe.WarmupDecay
    model = model_zoo.build("text_classifier")
    for v in model.trainable_variables:
        name = v.name if keras.config.backend() != "tensorflow" else v.value.name
        assert optimizer._use_weight_decay(v) == model.optimizer._use_weight_decay(v), name


def test_text_classifier_fits_raw_strings():
    from keras_gmlp.models import GMLPTextClassifier
    from keras_gmlp.models import GMLPTextClassifierPreprocessor
    from keras_gmlp.models import GMLPTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]
    texts = ["good film", "bad film", "very good", "very bad", "good", "bad"] * 4
    labels = np.array([1, 0, 1, 0, 1, 0] * 4)
    preprocessor = GMLPTextClassifierPreprocessor(GMLPTokenizer(vocabulary), sequence_length=model_zoo.N)
    model = GMLPTextClassifier(model_zoo.text_backbone(vocabulary_size=len(vocabulary)), 2,
                               preprocessor=preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(texts, labels, batch_size=24, epochs=12, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.evaluate(texts, labels, verbose=0, return_dict=True)["accuracy"] == 1.0
    np.testing.assert_array_equal(model.predict(["good film", "bad film"], verbose=0).argmax(-1), [1, 0])
