"""The trainers on the JAX backend, on 8 virtual CPU devices standing in for a TPU slice.

Every run is its own process (`KERAS_BACKEND` and `XLA_FLAGS=--xla_force_host_platform_
device_count=8` must be set before JAX starts). The runs are tiny masked LMs sharing one
character-level vocabulary; a constant rate after warmup makes the first steps' learning
rates independent of --train_steps, so short runs compare with the long baseline. Two
`--multi_host` processes of 2 devices each, joined over localhost (gloo collectives on CPU),
stand in for a 2-host slice.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 (registers the ops of the export's tokenizer)

from trainer_processes import losses as _losses
from trainer_processes import model_values as _model_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 40
COMPARED_STEPS = 10
TINY_MLM = [
    "--model=gmlp_tiny", "--model_overrides=num_layers=1,hidden_dim=32,ffn_dim=64",
    "--sequence_length=32", "--global_batch_size=8", "--warmup_steps=3", "--decay=constant",
    "--learning_rate=2e-3", "--log_every=1", "--checkpoint_every=4", "--eval_steps=1",
    "--seed=3",
]


def _env(devices=1, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    for name in ("TF_CONFIG", "KERAS_DISTRIBUTION_JOB_ADDRESSES",
                 "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        env.pop(name, None)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    env.update(extra)
    return env


def _start(module, args, devices=1, **env):
    model_dir = next(a for a in args if a.startswith("--model_dir="))[len("--model_dir="):]
    log = open(f"{model_dir}.{time.monotonic_ns()}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                               env=_env(devices, **env), stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log.name
    return process


def _finish(process, timeout=900):
    process.wait(timeout=timeout)
    with open(process.log_path) as f:
        return process.returncode, f.read()


def _run(module, args, devices=1, expect_ok=True):
    returncode, output = _finish(_start(module, args, devices))
    if expect_ok:
        assert returncode == 0, output[-4000:]
    return returncode, output


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    """Characters and their ##-continuations: every word tokenises, nothing to learn."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,;:!?'\"()[]{}-_/=+*<>#@%&",
              *chars, *[f"##{c}" for c in chars]]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return str(path)


def _mlm_args(model_dir, vocab_file, train_steps, *extra):
    return [f"--model_dir={model_dir}", f"--vocab_file={vocab_file}",
            f"--train_steps={train_steps}", *TINY_MLM, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vocab_file):
    """One device (40 steps), 8-device data_parallel and model_parallel (10 steps each)."""
    root = tmp_path_factory.mktemp("jax_runs")
    dirs = {name: str(root / name) for name in ("one", "data", "model")}
    outputs = {}
    _, outputs["one"] = _run("trainers.pretrain_mlm", _mlm_args(dirs["one"], vocab_file,
                                                                TRAIN_STEPS))
    # One step per host call here; the other runs' loops end at the checkpoints (every 4).
    _, outputs["data"] = _run("trainers.pretrain_mlm", _mlm_args(
        dirs["data"], vocab_file, COMPARED_STEPS, "--strategy=data_parallel",
        "--steps_per_loop=1"), devices=8)
    # 10 steps in loops of 4, 4 and 2: the last loop's padding must not change anything.
    _, outputs["model"] = _run("trainers.pretrain_mlm", _mlm_args(
        dirs["model"], vocab_file, COMPARED_STEPS, "--strategy=model_parallel",
        "--model_parallel_size=4", "--steps_per_loop=4", f"--export_dir={root}/export"),
        devices=8)
    return dirs, outputs, str(root / "export")


def test_one_device_data_parallel_and_model_parallel_give_the_same_losses(runs):
    dirs, outputs, _ = runs
    assert "one device on 1 device(s)" in outputs["one"]
    assert "DataParallel on 8 device(s)" in outputs["data"]
    assert "Mesh {'batch': 8}: 0 of" in outputs["data"]
    # The model-parallel run really splits the weights: the channel projections, embeddings
    # and MLM head transform hold almost every parameter.
    assert "ModelParallel on 8 device(s)" in outputs["model"]
    assert "Mesh {'batch': 2, 'model': 4}: 10 of 20 weights split" in outputs["model"]
    one, data, model = (_losses(dirs[name]) for name in ("one", "data", "model"))
    assert sorted(one) == list(range(1, TRAIN_STEPS + 1))
    assert sorted(data) == sorted(model) == list(range(1, COMPARED_STEPS + 1))
    table = np.array([[one[s], data[s], model[s]] for s in range(1, COMPARED_STEPS + 1)])
    print("step  1 device  data_parallel(8)  model_parallel(2x4)")
    for step, row in enumerate(table, 1):
        print(f"{step:4d}  {row[0]:.6f}  {row[1]:.6f}  {row[2]:.6f}")
    np.testing.assert_allclose(table[:, 1], table[:, 0], rtol=1e-4)
    np.testing.assert_allclose(table[:, 2], table[:, 0], rtol=1e-4)
    # Training moves the loss: equal columns are not three copies of a constant.
    assert np.ptp(table[:, 0]) > 1e-3
    np.testing.assert_array_less(np.mean([one[s] for s in range(31, 41)]),
                                 np.mean([one[s] for s in range(1, 11)]))


def test_run_writes_summaries_flags_and_tf_compatible_checkpoints(runs):
    dirs, _, _ = runs
    with open(os.path.join(dirs["model"], "flags.json")) as f:
        assert json.load(f)["strategy"] == "model_parallel"
    latest = tf.train.latest_checkpoint(dirs["model"])
    assert latest.endswith(f"ckpt-{COMPARED_STEPS}")
    values = _model_values(latest)
    # The TF loop's keys, so either backend's fine-tuning can read the backbone.
    assert "model/block_0__spatial_gating_unit__spatial_kernel/.ATTRIBUTES/VARIABLE_VALUE" in values
    tags = set()
    for name in os.listdir(os.path.join(dirs["model"], "train")):
        for event in tf.compat.v1.train.summary_iterator(
                os.path.join(dirs["model"], "train", name)):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "grad_norm", "train_accuracy", "steps_per_second"} <= tags


def test_sigkill_after_a_checkpoint_then_restart_equals_an_uninterrupted_run(runs, vocab_file,
                                                                           tmp_path):
    dirs, _, _ = runs
    model_dir = str(tmp_path / "killed")
    args = _mlm_args(model_dir, vocab_file, TRAIN_STEPS)
    process = _start("trainers.pretrain_mlm", args)
    state_file = os.path.join(model_dir, "checkpoint")
    while not os.path.exists(state_file):  # the first checkpoint's index is in place
        assert process.poll() is None, _finish(process)[1][-4000:]
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert _finish(process, 60)[0] == -signal.SIGKILL
    killed_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert killed_at < TRAIN_STEPS, "the run finished before it could be killed"

    _, output = _run("trainers.pretrain_mlm", args)
    assert f"at step {killed_at}." in output  # "Resumed from .../ckpt-N at step N."
    expected, got = _losses(dirs["one"]), _losses(model_dir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [expected[s] for s in sorted(expected)], rtol=1e-6)
    final = _model_values(tf.train.latest_checkpoint(model_dir))
    reference = _model_values(tf.train.latest_checkpoint(dirs["one"]))
    assert final.keys() == reference.keys() and len(final) > 10
    for key in reference:
        np.testing.assert_allclose(final[key], reference[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def test_sigint_saves_the_current_step_exits_130_and_the_restart_equals_an_uninterrupted_run(
        runs, vocab_file, tmp_path):
    dirs, _, _ = runs
    model_dir = str(tmp_path / "preempted")
    # Loops of 3 steps: the first ends at step 3, which is no checkpoint step (every 4).
    process = _start("trainers.pretrain_mlm", _mlm_args(model_dir, vocab_file, TRAIN_STEPS,
                                                        "--steps_per_loop=3"))
    deadline = time.monotonic() + 300
    while " parameters." not in open(process.log_path).read():  # built, not yet trained
        assert process.poll() is None and time.monotonic() < deadline, \
            _finish(process)[1][-4000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    returncode, output = _finish(process, 600)
    assert returncode == 130, output[-4000:]
    saved = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert f"SIGINT received: saved a checkpoint of step {saved} " in output
    assert saved < TRAIN_STEPS and max(_losses(model_dir)) == saved

    _, output = _run("trainers.pretrain_mlm", _mlm_args(model_dir, vocab_file, TRAIN_STEPS))
    assert f"at step {saved}." in output
    expected, got = _losses(dirs["one"]), _losses(model_dir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [expected[s] for s in sorted(expected)], rtol=1e-6)
    final = _model_values(tf.train.latest_checkpoint(model_dir))
    reference = _model_values(tf.train.latest_checkpoint(dirs["one"]))
    assert final.keys() == reference.keys() and len(final) > 10
    for key in reference:
        np.testing.assert_allclose(final[key], reference[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)


# Runs on the JAX backend with 8 devices: builds the model-parallel run's task, checks the
# layouts, AdamW's weight-decay exclusion and the compiled train loop, and writes the
# trained model's logits on fixed inputs for the export comparison.
CHECKS = r"""
import json, re, sys
import numpy as np
args = json.loads(sys.argv[1])
from absl import flags
from trainers import pretrain_mlm
pretrain_mlm.define_flags()
fv = flags.FLAGS
fv(["checks", "--flagfile=" + args["flags_file"]])
import jax, keras
from keras_gmlp.models import GMLPBackbone
from trainers.core import jax_loop, optimization

task = pretrain_mlm.MaskedLMTask(fv)
task.prepare(fv.model_dir, False)
keras.distribution.set_distribution(jax_loop.make_distribution("model_parallel", 4, GMLPBackbone))
model = task.build_model()
result = {"specs": {v.path: [a for a in v.value.sharding.spec] for v in model.weights},
          "shard_shapes": {v.path: list(v.value.addressable_shards[0].data.shape)
                           for v in model.weights}}

# AdamW on JAX: one update with zero gradients from all-ones weights changes exactly the
# weights it decays (Adam's own step is zero).
optimizer = optimization.make_optimizer(fv, 0.1)
optimizer.build(model.trainable_variables)
ones = [jax.numpy.ones_like(v.value) for v in model.trainable_variables]
zeros = [jax.numpy.zeros_like(v.value) for v in model.trainable_variables]
new, _ = optimizer.stateless_apply([v.value for v in optimizer.variables], zeros, ones)
result["decayed"] = {v.path: bool(np.any(np.asarray(a) != 1.0))
                     for v, a in zip(model.trainable_variables, new)}

def callbacks(text):
    return sorted(set(re.findall(r"\w*callback\w*|\b(?:outfeed|infeed|send|recv)\b", text)))

trainer = jax_loop.Trainer(task, model, optimizer, keras.distribution.distribution(), 1.0)
state = trainer.state()
batch = jax_loop._numpy(next(iter(task.train_dataset(fv.global_batch_size))))
batches = trainer.device_batch(jax.tree_util.tree_map(lambda b: np.stack([b, b]), batch), True)
lowered = trainer.lower_train_loop(state, batches, 2)
result["hlo_callbacks"] = callbacks(lowered.as_text())
result["jaxpr_callbacks"] = callbacks(str(jax.make_jaxpr(trainer._train_loop)(state, batches, 2)))
result["hlo_has_loop_and_collectives"] = [
    word in lowered.as_text() for word in ("stablehlo.while", "sharding")]
def leaky(x):
    jax.debug.callback(print, x)
    return x * 2
result["control"] = callbacks(jax.jit(leaky).lower(np.ones(2, np.float32)).as_text())

jax_loop.load_model_weights(model, args["checkpoint"])
inputs = {k: np.asarray(v) for k, v in args["inputs"].items()}
np.save(args["logits"], np.asarray(model(inputs, training=False), np.float32))
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def checks(runs, tmp_path_factory):
    dirs, _, _ = runs
    rng = np.random.default_rng(0)
    inputs = {"token_ids": rng.integers(5, 60, (2, 32)).tolist(),
              "padding_mask": [[1] * 32, [1] * 20 + [0] * 12],
              "mask_positions": [[1, 3, 5, 7, 9], [0, 2, 4, 6, 8]]}
    logits = str(tmp_path_factory.mktemp("checks") / "logits.npy")
    args = dict(flags_file=os.path.join(dirs["model"], "flags.txt"), inputs=inputs,
                checkpoint=tf.train.latest_checkpoint(dirs["model"]), logits=logits)
    result = subprocess.run([sys.executable, "-c", CHECKS, json.dumps(args)], cwd=REPO,
                            env=_env(8), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), inputs, np.load(logits)


def test_model_parallel_layout_splits_projections_embeddings_and_heads(checks):
    result, _, _ = checks
    specs, shapes = result["specs"], result["shard_shapes"]
    for half in ("u", "v"):
        assert specs[f"block_0/channel_projection_{half}/kernel"] == [None, "model"]
        assert shapes[f"block_0/channel_projection_{half}/kernel"] == [32, 64 // 2 // 4]
    assert specs["block_0/channel_projection_out/kernel"] == ["model", None]
    assert shapes["block_0/channel_projection_out/kernel"] == [32 // 4, 32]
    assert specs["token_embedding/embeddings"] == [None, "model"]
    assert specs["mlm_head/intermediate_dense/kernel"] == [None, "model"]
    assert not any(specs["block_0/spatial_gating_unit/spatial_kernel"])  # tokens, replicated
    assert not any(specs["final_norm/gamma"])


def test_adamw_skips_decay_on_layernorm_and_biases_on_jax(checks):
    decayed = checks[0]["decayed"]
    assert len(decayed) > 10
    for path, was_decayed in decayed.items():
        name = path.rsplit("/", 1)[-1]
        should = name not in ("gamma", "beta") and not name.endswith("bias")
        assert was_decayed == should, path
    assert decayed["token_embedding/embeddings"] and not decayed["mlm_head/output_bias"]


def test_compiled_train_loop_has_no_host_callbacks(checks):
    result = checks[0]
    assert result["control"], "the detector misses a jax.debug.callback"
    assert result["hlo_callbacks"] == [] and result["jaxpr_callbacks"] == []
    assert result["hlo_has_loop_and_collectives"] == [True, True]


def test_export_gives_the_jax_models_outputs(runs, checks):
    dirs, outputs, export_base = runs
    assert "Exported a SavedModel to" in outputs["model"]
    _, inputs, jax_logits = checks
    versions = os.listdir(export_base)
    assert len(versions) == 1
    serve = tf.saved_model.load(os.path.join(export_base, versions[0])).signatures[
        "serving_default"]
    served = serve(**{k: tf.constant(v, tf.int32) for k, v in inputs.items()})["logits"]
    assert served.shape == jax_logits.shape == (2, 5, 103)
    np.testing.assert_allclose(served.numpy(), jax_logits, atol=1e-5, rtol=1e-5)
    assert np.ptp(jax_logits) > 0.1
    # The run's MODEL_DIR/preset (saved from the sharded JAX weights) loads on TensorFlow with
    # keras-hub's generic loader and gives the same logits.
    import keras_hub

    import keras_gmlp  # noqa: F401 (registers the classes the preset names, whatever ran before)

    model = keras_hub.models.MaskedLM.from_preset(os.path.join(dirs["model"], "preset"))
    logits = model({k: tf.constant(v, tf.int32) for k, v in inputs.items()}, training=False)
    np.testing.assert_allclose(np.asarray(logits), jax_logits, atol=1e-5, rtol=1e-5)


def test_image_trainer_non_finite_loss_stops_and_keeps_only_finite_checkpoints(tmp_path):
    model_dir = str(tmp_path / "nan")
    returncode, output = _run(
        "trainers.train_image_classifier",
        [f"--model_dir={model_dir}", "--model_overrides=num_layers=1,patch_size=2",
         "--global_batch_size=16", "--train_steps=50", "--warmup_steps=5",
         "--learning_rate=1e30", "--global_clipnorm=0", "--checkpoint_every=1", "--log_every=1",
         "--keep_checkpoints=50", "--max_recoveries=0"],
        expect_ok=False)
    assert returncode == 3, output[-4000:]
    assert "Non-finite training loss" in output and "last good checkpoint is kept" in output
    losses = _losses(model_dir)
    bad_step = max(losses) + 1  # the failing step is never logged or saved
    # Warmup's first rate is 0, so step 2's update is the first to explode the weights.
    assert 3 <= bad_step < 50 and all(np.isfinite(list(losses.values())))
    # The checkpoint of the step before gave the non-finite loss: it was deleted.
    assert "it was deleted" in output
    latest = tf.train.latest_checkpoint(model_dir)
    assert latest.endswith(f"ckpt-{bad_step - 2}")
    assert not os.path.exists(os.path.join(model_dir, f"ckpt-{bad_step - 1}.index"))
    for index in glob.glob(os.path.join(model_dir, "ckpt-*.index")):
        for key, value in _model_values(index[:-len(".index")]).items():
            if value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), (index, key)


def test_finetuning_on_jax_restores_the_backbone_of_a_jax_pretraining_run(runs, tmp_path):
    dirs, _, _ = runs
    data = tmp_path / "train.tsv"
    rows = ["sentence\tlabel"] + [f"{'good' if i % 2 else 'bad'} value number {i}\t{i % 2}"
                                  for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    model_dir = str(tmp_path / "finetune")
    # A zero learning rate keeps every weight (AdamW's decay is scaled by it too).
    _run("trainers.finetune_text_classifier",
         [f"--model_dir={model_dir}", f"--init_checkpoint={dirs['one']}", f"--data={data}",
          "--global_batch_size=8", "--train_steps=1", "--warmup_steps=0", "--learning_rate=0",
          "--eval_steps=1"])
    pretrained = _model_values(tf.train.latest_checkpoint(dirs["one"]))
    finetuned = _model_values(tf.train.latest_checkpoint(model_dir))
    backbone_keys = [k for k in finetuned if not k.startswith(("model/head", "model/rng"))]
    assert len(backbone_keys) == 15  # embeddings, 12 block variables (u and v apart), final norm
    for key in backbone_keys:
        np.testing.assert_array_equal(finetuned[key], pretrained[key], err_msg=key)
    # Pretraining moved the SGU bias away from its initial ones, so a match is not by chance.
    bias = "model/block_0__spatial_gating_unit__spatial_bias/.ATTRIBUTES/VARIABLE_VALUE"
    assert not np.allclose(finetuned[bias], 1.0)


def test_strategies_of_the_other_backend_fail_at_start_up(tmp_path):
    from absl import flags

    from trainers.core import flags as flags_lib

    fv = flags.FlagValues()
    flags_lib.define_common_flags(fv)
    flags_lib.register_validators(flags_lib.TEXT, fv)
    # This process runs the TensorFlow backend: the JAX-only strategies are refused by name.
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"--strategy=model_parallel: expected one of \['default'"):
        fv(["trainer", f"--model_dir={tmp_path}/run", "--strategy=model_parallel"])
    assert not (tmp_path / "run").exists()


MULTI_HOST_STEPS = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_processes(module, args_of_process, devices):
    """One `--multi_host` process per argument list, joined through Keras' variables."""
    port = _free_port()
    return [_start(module, args, devices, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(len(args_of_process)),
                   KERAS_DISTRIBUTION_PROCESS_ID=str(index))
            for index, args in enumerate(args_of_process)]


def _finish_processes(processes, timeout=600):
    """(returncode, log) of each; once one has failed, the others (waiting on it) are killed."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        running = next(p for p in processes if p.poll() is None)
        try:
            running.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline or any(p.poll() for p in processes):
            for p in processes:
                if p.poll() is None:
                    p.kill()
    return [_finish(p) for p in processes]


def _multi_host_args(model_dir, vocab_file, train_steps, *strategy):
    return _mlm_args(model_dir, vocab_file, train_steps, "--multi_host",
                     *(strategy or ["--strategy=data_parallel"]))


@pytest.fixture(scope="module")
def multi_host(vocab_file, tmp_path_factory):
    """8 steps of 2 processes x 2 devices with --multi_host, as one data-parallel program.

    On a slice every process names the same shared --model_dir. Here process 1 names one of
    its own, so that what it writes is seen apart: only its input iterator, by design.
    """
    root = tmp_path_factory.mktemp("multi_host")
    dirs = [str(root / "process_0"), str(root / "process_1")]
    outputs = _finish_processes(_start_processes("trainers.pretrain_mlm", [
        _multi_host_args(d, vocab_file, MULTI_HOST_STEPS) for d in dirs], devices=2))
    for returncode, output in outputs:
        assert returncode == 0, output[-4000:]
    return dirs, [output for _, output in outputs]


def test_two_multi_host_processes_train_as_one_data_parallel_program(runs, multi_host):
    dirs, outputs = multi_host
    for index, output in enumerate(outputs):
        assert "DataParallel on 4 device(s) in 2 process(es)." in output
        assert "Mesh {'batch': 4}" in output
        # Each process's pipeline reads and masks only its half of every global batch.
        assert f"Input: this process's pipeline ({index} of 2) reads 4 of every 8" in output
    one, data, got = (_losses(d) for d in (runs[0]["one"], runs[0]["data"], dirs[0]))
    assert sorted(got) == list(range(1, MULTI_HOST_STEPS + 1))
    table = np.array([[one[s], data[s], got[s]] for s in sorted(got)])
    print("step  1 device  data_parallel(8)  2 processes x 2 devices")
    for step, row in enumerate(table, 1):
        print(f"{step:4d}  {row[0]:.6f}  {row[1]:.6f}  {row[2]:.6f}")
    np.testing.assert_allclose(table[:, 2], table[:, 0], rtol=1e-4)
    np.testing.assert_allclose(table[:, 2], table[:, 1], rtol=1e-4)
    assert np.ptp(table[:, 0]) > 1e-3
    # Process 0 saved the weights of the whole program (gathered from every device).
    saved = _model_values(os.path.join(dirs[0], f"ckpt-{MULTI_HOST_STEPS}"))
    reference = _model_values(os.path.join(runs[0]["data"], f"ckpt-{MULTI_HOST_STEPS}"))
    assert saved.keys() == reference.keys() and len(saved) > 10
    for key in reference:
        np.testing.assert_allclose(saved[key], reference[key], rtol=1e-3, atol=1e-5,
                                   err_msg=key)
    # The weights are split across the processes, so a TensorFlow child wrote the preset from
    # the final checkpoint: it holds exactly that checkpoint's weights.
    import keras_hub

    from trainers.core.checkpoints import checkpoint_keys

    model = keras_hub.models.MaskedLM.from_preset(os.path.join(dirs[0], "preset"))
    assert model.preprocessor is not None
    for key, weight in zip(checkpoint_keys(model.weights), model.weights):
        np.testing.assert_array_equal(np.asarray(weight),
                                      saved[f"model/{key}/.ATTRIBUTES/VARIABLE_VALUE"], key)


def test_multi_host_only_process_0_writes_the_run_the_others_their_input_iterators(multi_host):
    dirs, _ = multi_host
    assert sorted(os.listdir(dirs[0])) == [
        ".lock", "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
        "ckpt-8.data-00000-of-00001", "ckpt-8.index", "eval", "flags.json", "flags.txt",
        "metrics.jsonl", "model_config.json", "preset", "train", "vocab.txt"]
    for summaries in ("train", "eval"):  # one events file: one writer
        assert len(os.listdir(os.path.join(dirs[0], summaries))) == 1
    with open(os.path.join(dirs[0], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [record["step"] for record in records if "loss" in record]
    assert steps == list(range(1, MULTI_HOST_STEPS + 1))  # each step written once
    assert os.listdir(dirs[1]) == ["input_worker_1"]
    assert sorted(os.listdir(os.path.join(dirs[1], "input_worker_1"))) == [
        "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
        "ckpt-8.data-00000-of-00001", "ckpt-8.index"]


def test_multi_host_processes_restarted_resume_from_their_own_input_positions(
        runs, multi_host, vocab_file, tmp_path):
    dirs, _ = multi_host
    # The shared directory the two processes would have written on a slice.
    model_dir = str(tmp_path / "shared")
    shutil.copytree(dirs[0], model_dir)
    shutil.copytree(os.path.join(dirs[1], "input_worker_1"),
                    os.path.join(model_dir, "input_worker_1"))
    # Restarted on a ("batch", "model") mesh of 2 x 2: the restored weights are split over
    # each process's devices, the batch still over the processes.
    outputs = _finish_processes(_start_processes("trainers.pretrain_mlm", [_multi_host_args(
        model_dir, vocab_file, MULTI_HOST_STEPS + 4, "--strategy=model_parallel",
        "--model_parallel_size=2")] * 2, devices=2))
    for index, (returncode, output) in enumerate(outputs):
        assert returncode == 0, output[-4000:]
        assert f"ckpt-{MULTI_HOST_STEPS} at step {MULTI_HOST_STEPS}." in output
        assert "Mesh {'batch': 2, 'model': 2}: 10 of 20 weights split" in output
        assert f"Input: this process's pipeline ({index} of 2) reads 4 of every 8" in output
    # The steps after the restart read on from where each process's pipeline had stopped.
    one, got = _losses(runs[0]["one"]), _losses(model_dir)
    assert sorted(got) == list(range(1, MULTI_HOST_STEPS + 5))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [one[s] for s in sorted(got)],
                               rtol=1e-4)


def test_multi_host_without_a_cluster_fails_before_writing_and_names_the_variables(
        vocab_file, tmp_path):
    model_dir = str(tmp_path / "run")
    returncode, output = _run("trainers.pretrain_mlm",
                              _multi_host_args(model_dir, vocab_file, 4), expect_ok=False)
    assert returncode == 1, output[-4000:]
    assert "--multi_host: jax.distributed.initialize() found no cluster to join" in output
    assert "KERAS_DISTRIBUTION_NUM_PROCESSES" in output
    assert not os.path.exists(model_dir)


# Two image runs on the JAX backend in one process: one whose 8th training batch holds NaN
# pixels (recovered from with --max_recoveries=1), one whose data never had batches 6-8.
RECOVERY = r"""
import json, sys
import tensorflow as tf
from absl import flags
from trainers import train_image_classifier
from trainers.core import loop

args = json.loads(sys.argv[1])


class Poisoned(train_image_classifier.ImageClassificationTask):
    def train_dataset(self, batch_size, input_context=None):
        dataset = super().train_dataset(batch_size, input_context)
        nan = tf.constant(float("nan"))
        return dataset.enumerate().map(
            lambda index, batch: (tf.where(index == 7, batch[0] * nan, batch[0]), batch[1]))


class WithoutTheWindow(train_image_classifier.ImageClassificationTask):
    def train_dataset(self, batch_size, input_context=None):
        dataset = super().train_dataset(batch_size, input_context)
        return dataset.enumerate().filter(
            lambda index, batch: tf.logical_or(index < 5, index > 7)).map(
            lambda index, batch: batch)


for task_class, model_dir, extra in ((Poisoned, args["recovered"], ["--max_recoveries=1"]),
                                     (WithoutTheWindow, args["reference"], [])):
    fv = flags.FlagValues()
    train_image_classifier.define_flags(fv)
    fv(["trainer", f"--model_dir={model_dir}", *args["flags"], *extra])
    loop.run(task_class(fv))
"""


def test_a_nan_batch_is_recovered_from_on_jax_and_matches_a_run_without_its_window(tmp_path):
    dirs = dict(recovered=str(tmp_path / "recovered"), reference=str(tmp_path / "reference"))
    args = dict(dirs, flags=[
        "--model_overrides=num_layers=1,patch_size=2,hidden_dim=32,ffn_dim=64",
        "--global_batch_size=16", "--warmup_steps=2", "--decay=constant",
        "--learning_rate=2e-3", "--eval_steps=1", "--seed=5", "--train_steps=20",
        "--log_every=5", "--checkpoint_every=5", "--keep_checkpoints=10", "--steps_per_loop=5"])
    result = subprocess.run([sys.executable, "-c", RECOVERY, json.dumps(args)], cwd=REPO,
                            env=_env(1), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Recovered: resumed from ckpt-5; skipping the 3 input batch(es)" in result.stderr
    got, expected = _losses(dirs["recovered"]), _losses(dirs["reference"])
    np.testing.assert_allclose([got[s] for s in (10, 15, 20)], [expected[s] for s in (10, 15, 20)],
                               rtol=1e-6)
    a, b = (_model_values(os.path.join(dirs[d], "ckpt-20")) for d in ("recovered", "reference"))
    assert a.keys() == b.keys() and len(a) > 5
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
