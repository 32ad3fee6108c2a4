"""Runs the backend parity cases of test_backends.py on one Keras backend.

`python tests/backend_worker.py CASE_DIR OUT_DIR`, with KERAS_BACKEND set (jax or torch), runs
in a process where `import tensorflow` fails: the layers and models must not need it. For every
case that test_backends.py wrote to CASE_DIR (a serialized config, the TensorFlow side's weights,
fixed inputs, a fixed cotangent and, for models, the TensorFlow-saved `.keras` file and a tiny
training batch) it builds the object from its config (enabling LoRA where the case says so: a
config does not record it), assigns the weights, and writes to
OUT_DIR/<case>.npz the forward output, the gradients of `sum(output * cotangent)` with respect
to every trainable weight and float input (by this backend's own autodiff), the output of the
TensorFlow-saved `.keras` file loaded here, and the losses of a few `fit` steps; models are also
saved as OUT_DIR/<case>.keras for the TensorFlow side to load. test_backends.py imports the
same helpers to compute the TensorFlow reference in its own process.
"""

import importlib.abc
import importlib.util
import inspect
import json
import os
import sys
import traceback

# The TensorFlow family, blocked from import in the worker (simulating an install without it).
TENSORFLOW_PACKAGES = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "tensorboard", "tf_keras")


class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TENSORFLOW_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: no TensorFlow here)", name=name)
        return None


def block_tensorflow():
    """Makes `import tensorflow` (and its family) fail, and presence checks report it absent."""
    if any(name.split(".")[0] in TENSORFLOW_PACKAGES for name in sys.modules):
        raise RuntimeError("TensorFlow is already imported; block it before importing keras.")
    sys.meta_path.insert(0, _BlockTensorFlow())
    find_spec = importlib.util.find_spec

    def quiet_find_spec(name, package=None):
        if name.split(".")[0] in TENSORFLOW_PACKAGES:
            return None
        return find_spec(name, package)

    importlib.util.find_spec = quiet_find_spec


# --- case files: the same layout on both sides ---


def flatten_call(arg, kwargs):
    """{name: array} of a call's positional input (an array or a dict) and keyword inputs."""
    flat = {}
    if isinstance(arg, dict):
        flat.update({f"arg.{k}": v for k, v in arg.items()})
    else:
        flat["arg"] = arg
    flat.update({f"kw.{k}": v for k, v in kwargs.items()})
    return flat


def unflatten_call(flat):
    """Inverse of `flatten_call`: `(arg, kwargs)`."""
    arg = flat["arg"] if "arg" in flat else {k[4:]: v for k, v in flat.items() if k.startswith("arg.")}
    kwargs = {k[3:]: v for k, v in flat.items() if k.startswith("kw.")}
    return arg, kwargs


def differentiable_keys(flat):
    """The flat input names that gradients are taken for: float arrays of the positional input."""
    return sorted(k for k, v in flat.items() if k.startswith("arg") and v.dtype.kind == "f")


def load_npz(path):
    with open(path, "rb") as f:
        import numpy as np

        data = np.load(f)
        return {k: data[k] for k in data.files}


# --- one backend's forward pass and autodiff ---


def to_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _inference(obj, kwargs):
    # `stateless_call` hands its keywords to `call` as they are, so `training` only where
    # `call` takes it.
    if "training" in inspect.signature(obj.call).parameters:
        return dict(kwargs, training=False)
    return kwargs


def forward(obj, flat):
    """The inference output of `obj` on the flat inputs, as float32 NumPy."""
    arg, kwargs = unflatten_call(flat)
    return to_numpy(obj(arg, **_inference(obj, kwargs)))


def gradients(obj, flat, cotangent):
    """Gradients of `sum(float32(output) * cotangent)` with this backend's own autodiff.

    Returns `(weight_grads, input_grads)`: one array per `obj.trainable_variables` entry (zeros
    where a weight does not reach the output) and `{flat name: array}` for the float inputs.
    """
    import keras
    import numpy as np

    backend = keras.backend.backend()
    keys = differentiable_keys(flat)
    weights = obj.trainable_variables

    def call(values):
        return unflatten_call(dict(flat, **dict(zip(keys, values))))

    if backend == "tensorflow":
        import tensorflow as tf

        values = [tf.constant(flat[k]) for k in keys]
        with tf.GradientTape() as tape:
            tape.watch(values)
            arg, kwargs = call(values)
            out = obj(arg, **_inference(obj, kwargs))
            loss = tf.reduce_sum(tf.cast(out, "float32") * cotangent)
        grads = tape.gradient(loss, [w.value for w in weights] + values)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss_fn(trainable, values):
            arg, kwargs = call(values)
            out, _ = obj.stateless_call(
                trainable, [w.value for w in obj.non_trainable_variables], arg, **_inference(obj, kwargs)
            )
            return jnp.sum(out.astype("float32") * cotangent)

        weight_grads, input_grads = jax.grad(loss_fn, argnums=(0, 1))(
            [w.value for w in weights], [jnp.asarray(flat[k]) for k in keys]
        )
        grads = list(weight_grads) + list(input_grads)
    elif backend == "torch":
        import torch

        values = [torch.tensor(flat[k], requires_grad=True) for k in keys]
        arg, kwargs = call(values)
        out = obj(arg, **_inference(obj, kwargs))
        loss = torch.sum(out.float() * torch.from_numpy(cotangent))
        grads = torch.autograd.grad(loss, [w.value for w in weights] + values, allow_unused=True)
    else:
        raise ValueError(f"Unsupported backend {backend!r}.")
    arrays = [
        np.zeros(shape, "float32") if g is None else to_numpy(g)
        for g, shape in zip(grads, [tuple(w.shape) for w in weights] + [flat[k].shape for k in keys])
    ]
    return arrays[: len(weights)], dict(zip(keys, arrays[len(weights) :]))


def assign_weights(obj, arrays, names):
    """Assigns `arrays` to `obj.weights` in order, checking each weight's name and shape."""
    if len(arrays) != len(obj.weights):
        raise ValueError(f"{obj.name}: {len(obj.weights)} weights here, {len(arrays)} given.")
    for weight, value, name in zip(obj.weights, arrays, names):
        if weight.name != name or tuple(weight.shape) != value.shape:
            raise ValueError(
                f"{obj.name}: weight {weight.path} {tuple(weight.shape)} does not match the "
                f"saved {name} {value.shape}."
            )
        weight.assign(value)


def fit_losses(model, flat, fit_data, loss):
    """Per-epoch training losses of 3 steps of `fit` on one tiny batch (AdamW, lr 3e-3)."""
    import keras

    arg, _ = unflatten_call(flat)
    compile_args = {"optimizer": keras.optimizers.AdamW(3e-3)}
    if loss != "auto":
        compile_args["loss"] = loss
    model.compile(**compile_args)
    history = model.fit(
        arg,
        fit_data["y"],
        sample_weight=fit_data.get("sample_weight"),
        epochs=3,
        batch_size=len(fit_data["y"]),
        shuffle=False,
        verbose=0,
    )
    return history.history["loss"]


def run_case(case_dir, out_dir, case):
    import keras
    import numpy as np

    name = case["name"]
    flat = load_npz(os.path.join(case_dir, f"{name}.inputs.npz"))
    saved = load_npz(os.path.join(case_dir, f"{name}.weights.npz"))
    cotangent = load_npz(os.path.join(case_dir, f"{name}.cotangent.npz"))["cotangent"]
    obj = keras.saving.deserialize_keras_object(case["config"])
    if not obj.built:
        forward(obj, flat)
    if "lora_rank" in case.get("adaptation", {}):
        obj.enable_lora(case["adaptation"]["lora_rank"])  # configs do not record LoRA
    assign_weights(obj, [saved[f"w{i}"] for i in range(len(case["weight_names"]))], case["weight_names"])
    result = {"output": forward(obj, flat)}
    weight_grads, input_grads = gradients(obj, flat, cotangent)
    result.update({f"grad.w{i}": g for i, g in enumerate(weight_grads)})
    result.update({f"grad.{k}": g for k, g in input_grads.items()})
    if case["kind"] == "model":
        if case["keras_file"]:
            loaded = keras.saving.load_model(os.path.join(case_dir, f"{name}.keras"))
            result["tf_keras_file_output"] = forward(loaded, flat)
            obj.save(os.path.join(out_dir, f"{name}.keras"))
        fit_data = load_npz(os.path.join(case_dir, f"{name}.fit.npz"))
        result["fit_losses"] = np.asarray(fit_losses(obj, flat, fit_data, case["fit_loss"]), "float64")
    np.savez(os.path.join(out_dir, f"{name}.npz"), **result)


def main(case_dir, out_dir):
    block_tensorflow()
    import keras

    import keras_gmlp.layers  # noqa: F401  (registers the layers)
    import keras_gmlp.models  # noqa: F401  (registers the models)

    with open(os.path.join(case_dir, "cases.json")) as f:
        cases = json.load(f)
    keras.utils.set_random_seed(0)
    failed = []
    for case in cases:
        # One failing case must not hide the others: its traceback goes to <case>.error.txt.
        try:
            run_case(case_dir, out_dir, case)
        except Exception:  # noqa: BLE001
            failed.append(case["name"])
            with open(os.path.join(out_dir, f"{case['name']}.error.txt"), "w") as f:
                f.write(traceback.format_exc())
    report = {
        "backend": keras.backend.backend(),
        "tensorflow_imported": sorted(
            name for name in sys.modules if name.split(".")[0] in TENSORFLOW_PACKAGES
        ),
        "cases": [case["name"] for case in cases],
        "failed": failed,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(*sys.argv[1:])
