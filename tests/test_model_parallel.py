"""Model parallelism on 8 virtual CPU devices: no activation is resharded between devices.

Before `GMLPBlock` split its first projection into `channel_projection_u` and
`channel_projection_v`, the column split of the one `u|v` kernel put `u` and `v` on different
devices, and the compiled step of a 2-block backbone moved activation shards with 8
collective-permutes and 6 all-to-alls. The worker (tests/model_parallel_worker.py, its own JAX
process: the device count is fixed when JAX starts) compiles `jax.grad` of
`GMLPBackbone.stateless_call` under `ModelParallel(get_layout_map(mesh))` on a (1, 8) mesh,
gMLP and causal aMLP, and counts the collectives in the compiled HLO.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run([sys.executable, os.path.join(REPO, "tests", "model_parallel_worker.py")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("model", ["gmlp", "amlp"])
def test_compiled_step_moves_no_activation_shards(result, model):
    collectives = result[model]["collectives"]
    assert collectives["collective-permute"] == 0 and collectives["all-to-all"] == 0, collectives
    assert collectives["all-reduce"] > 0, collectives  # the step is really sharded
    specs = result[model]["specs"]
    for half in ("u", "v"):
        assert specs[f"block_1/channel_projection_{half}/kernel"] == [None, "model"]
        assert specs[f"block_1/channel_projection_{half}/bias"] == ["model"]
    assert specs["block_1/channel_projection_out/kernel"] == ["model", None]


@pytest.mark.parametrize("model", ["gmlp", "amlp"])
def test_eight_devices_give_one_device_loss_and_gradients(result, model):
    case = result[model]
    assert abs(case["loss_sharded"] - case["loss_one_device"]) <= 1e-5 * max(1.0, abs(case["loss_one_device"]))
    assert case["max_relative_gradient_difference"] < 1e-5


def test_a_mesh_axis_that_does_not_divide_a_width_names_the_argument(result):
    errors = result["errors"]
    assert errors["hidden_dim"].startswith("`hidden_dim`=30: expected a multiple of 4, the size of "
                                           "the mesh axis 'model'"), errors
    assert errors["ffn_dim"].startswith("`ffn_dim`=36: expected ffn_dim / 2 (18) to be a multiple "
                                        "of 4"), errors
