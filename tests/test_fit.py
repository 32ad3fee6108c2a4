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
