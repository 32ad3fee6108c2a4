"""Run by tests/test_model_parallel.py in a JAX process with 8 virtual CPU devices (the device
count must be set before JAX starts): compiles `jax.grad` of 2-block backbones under
`ModelParallel(get_layout_map(...))` on a (1, 8) mesh, counts the collectives in the compiled
HLO, compares the loss and gradients with one device's, and checks the divisibility error.
Prints one line, `RESULT <json>`.
"""

import json
import re

import jax
import keras
import numpy as np

from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models.layout import get_layout_map

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def _distribution(shape):
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), keras.distribution.list_devices())
    return keras.distribution.ModelParallel(layout_map=get_layout_map(mesh), batch_dim_name="batch")


def _case(build, inputs, rng):
    reference = build()  # one device
    for variable in reference.weights:  # away from the initialisation: W ~ 0 would hide mixing
        if "seed_generator" not in variable.path:
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    with _distribution((1, 8)).scope():
        sharded = build()
    for a, b in zip(sharded.weights, reference.weights):
        a.assign(b.value)
    cotangent = rng.normal(size=reference.compute_output_shape(
        jax.tree_util.tree_map(lambda x: x.shape, inputs))).astype("float32")
    result = {}
    for name, model in (("one_device", reference), ("sharded", sharded)):
        def loss(trainable, non_trainable, x, model=model):
            out, _ = model.stateless_call(trainable, non_trainable, x)
            return jax.numpy.sum(out * cotangent)

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        step = jax.jit(jax.value_and_grad(loss))
        value, grads = step(trainable, non_trainable, inputs)
        result[name] = {"loss": float(value), "grads": [np.asarray(g) for g in grads]}
        if name == "sharded":
            text = step.lower(trainable, non_trainable, inputs).compile().as_text()
            found = re.findall(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", text)
            result["collectives"] = {kind: found.count(kind) for kind in COLLECTIVES}
            result["sharded_specs"] = {v.path: [a for a in v.value.sharding.spec] for v in model.weights
                                       if "channel_projection" in v.path or "tiny_attention" in v.path}
    grad_error = max(float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))
                     for a, b in zip(result["sharded"]["grads"], result["one_device"]["grads"]))
    return {"collectives": result["collectives"], "specs": result["sharded_specs"],
            "loss_one_device": result["one_device"]["loss"], "loss_sharded": result["sharded"]["loss"],
            "max_relative_gradient_difference": grad_error}


def main():
    rng = np.random.default_rng(0)
    mask = np.ones((4, 16), "int32")
    mask[1, 10:] = 0
    text = {"token_ids": (rng.integers(1, 64, (4, 16)) * mask).astype("int32"), "padding_mask": mask}

    def text_backbone(**kwargs):
        return lambda: GMLPBackbone(vocabulary_size=64, num_layers=2, hidden_dim=32, ffn_dim=128,
                                    sequence_length=16, **kwargs)

    results = {
        "gmlp": _case(text_backbone(), text, rng),
        "amlp": _case(text_backbone(tiny_attention_dim=8, causal=True), text, rng),
    }
    errors = {}
    for argument, kwargs in (("hidden_dim", dict(hidden_dim=30, ffn_dim=64)),
                             ("ffn_dim", dict(hidden_dim=32, ffn_dim=36))):
        with _distribution((2, 4)).scope():
            try:
                GMLPBackbone(vocabulary_size=64, num_layers=1, sequence_length=8, **kwargs)
                errors[argument] = None
            except ValueError as e:
                errors[argument] = str(e)
    results["errors"] = errors
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
