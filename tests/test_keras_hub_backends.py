"""The models on JAX and PyTorch: built in a subprocess per backend, compared with TensorFlow.

Each backend needs its own process (Keras reads KERAS_BACKEND once). The parent builds every
model of `model_zoo` on TensorFlow, saves its weights and outputs; the child rebuilds the same
models on the other backend, loads the weights and must give the same outputs. The JAX child
also blocks TensorFlow, so `keras_gmlp.layers` / `keras_gmlp.models` are shown to need none.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import model_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys
class NoTensorFlow:
    # An import hook rather than sys.modules["tensorflow"] = None: Keras tests
    # `"tensorflow" in sys.modules` to detect tf.data graphs, and a None entry would read as
    # TensorFlow being loaded.
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith(("tensorflow.", "tensorflow_text")):
            raise ImportError("TensorFlow is blocked in this test")
        return None
if os.environ["KERAS_BACKEND"] == "jax":
    sys.meta_path.insert(0, NoTensorFlow())
sys.path[:0] = [os.path.join(sys.argv[1], "tests"), sys.argv[1]]
import keras
import numpy as np
import keras_gmlp.layers
import keras_gmlp.models
import model_zoo
out_dir = sys.argv[2]
result = {}
for model_type in model_zoo.MODEL_TYPES:
    model = model_zoo.build(model_type)
    model.load_weights(os.path.join(out_dir, model_type + ".weights.h5"))
    x = dict(np.load(os.path.join(out_dir, model_type + ".npz")))
    x = x.pop("images") if "images" in x else x
    np.save(os.path.join(out_dir, model_type + "." + keras.config.backend() + ".npy"),
            keras.ops.convert_to_numpy(model(x)))
print(json.dumps({"tensorflow_loaded": "tensorflow" in sys.modules}))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_build_and_match_tensorflow_on(backend, rng, tmp_path):
    expected = {}
    for model_type in model_zoo.MODEL_TYPES:
        model = model_zoo.build(model_type)
        x = model_zoo.inputs(model_type, rng)
        expected[model_type] = keras.ops.convert_to_numpy(model(x))
        model.save_weights(str(tmp_path / f"{model_type}.weights.h5"))
        np.savez(tmp_path / f"{model_type}.npz", **(x if isinstance(x, dict) else {"images": x}))
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if backend == "jax":
        assert json.loads(proc.stdout.splitlines()[-1]) == {"tensorflow_loaded": False}
    for model_type, want in expected.items():
        got = np.load(tmp_path / f"{model_type}.{backend}.npy")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=model_type)
