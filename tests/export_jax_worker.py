"""`model.export` on the JAX backend, for test_export_runtimes.py.

`KERAS_BACKEND=jax python tests/export_jax_worker.py OUT_DIR` builds each task of
test_export_runtimes.TASKS (tests/model_zoo.py), exports it to each format, runs the artifact in
its runtime, and writes OUT_DIR/report.json: {"TASK/FORMAT": {"status": "ok", "differences":
[max |d| / max |keras|, ...]} or {"status": "error", "type": ..., "message": ...} or
{"status": "skipped: ..."}}.

Text models are exported with their sequence length fixed in `input_signature`: with Keras'
default signature jax2tf gives `token_ids` and `padding_mask` separate symbolic lengths, which
the block cannot compare with `sequence_length` nor broadcast against each other.
"""

import importlib.util
import json
import os
import sys
import traceback

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import model_zoo  # noqa: E402
from test_export_runtimes import FORMATS  # noqa: E402
from test_export_runtimes import TASKS  # noqa: E402
from test_export_runtimes import relative_difference  # noqa: E402
from test_export_runtimes import run_artifact  # noqa: E402

RUNTIME_MODULES = {"onnx": "onnxruntime", "openvino": "openvino", "litert": None,
                   "tf_saved_model": None}


def fixed_length_signature(inputs):
    return [{name: keras.InputSpec(shape=(None, value.shape[1]), dtype="int32", name=name)
             for name, value in inputs.items()}]


def run_case(model, fmt, path, batches):
    module = RUNTIME_MODULES[fmt]
    if module and importlib.util.find_spec(module) is None:
        return {"status": f"skipped: {module} not installed"}
    first = batches[0][0]
    signature = fixed_length_signature(first) if isinstance(first, dict) else None
    try:
        model.export(path, format=fmt, verbose=False, input_signature=signature)
        differences = [relative_difference(run_artifact(fmt, path, x), expected)
                       for x, expected in batches]
    except Exception as error:  # the report says what fails and how
        return {"status": "error", "type": type(error).__name__,
                "message": str(error)[:2000], "traceback": traceback.format_exc()[-2000:]}
    return {"status": "ok", "differences": differences}


def main(out_dir):
    assert keras.backend.backend() == "jax", keras.backend.backend()
    rng = np.random.default_rng(0)
    report = {}
    for task in TASKS:
        keras.utils.set_random_seed(0)
        model = model_zoo.build(task)
        batches = []
        for batch in (2, 3):
            x = model_zoo.inputs(task, rng, batch=batch)
            batches.append((x, model.predict(x, verbose=0)))
        model(batches[0][0])  # Keras' onnx export wants a model that was called, not predicted
        for fmt, suffix in FORMATS.items():
            path = os.path.join(out_dir, f"{task}{suffix}")
            report[f"{task}/{fmt}"] = run_case(model, fmt, path, batches)
            case = report[f"{task}/{fmt}"]
            print(task, fmt, case["status"], case.get("differences", case.get("type", "")), flush=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
