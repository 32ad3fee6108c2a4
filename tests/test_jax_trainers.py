"""The trainers on the JAX backend, on 8 virtual CPU devices standing in for a TPU slice.

Every run is its own process (`KERAS_BACKEND` and `XLA_FLAGS=--xla_force_host_platform_
device_count=8` must be set before JAX starts). The runs are tiny masked LMs sharing one
character-level vocabulary; a constant rate after warmup makes the first steps' learning
rates independent of --train_steps, so short runs compare with the long baseline.
"""

import glob
import json
import os
import signal
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
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
TRAIN_STEPS = 40
COMPARED_STEPS = 10
TINY_MLM = [
    "--model=gmlp_tiny", "--model_overrides=num_layers=1,hidden_dim=32,ffn_dim=64",
    "--sequence_length=32", "--global_batch_size=8", "--warmup_steps=3", "--decay=constant",
    "--learning_rate=2e-3", "--log_every=1", "--checkpoint_every=4", "--eval_steps=1",
    "--seed=3",
]


def _env(devices=1):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env["XLA_FLAGS"] = EIGHT_DEVICES if devices == 8 else ""
    return env


def _start(module, args, devices=1):
    model_dir = next(a for a in args if a.startswith("--model_dir="))[len("--model_dir="):]
    log = open(f"{model_dir}.{time.monotonic_ns()}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                               env=_env(devices), stdout=log, stderr=subprocess.STDOUT)
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
    assert "Mesh {'batch': 2, 'model': 4}: 8 of 18 weights split" in outputs["model"]
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
    assert specs["block_0/channel_projection_in/kernel"] == [None, "model"]
    assert shapes["block_0/channel_projection_in/kernel"] == [32, 64 // 4]
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
    _, outputs, export_base = runs
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


def test_image_trainer_non_finite_loss_stops_and_keeps_only_finite_checkpoints(tmp_path):
    model_dir = str(tmp_path / "nan")
    returncode, output = _run(
        "trainers.train_image_classifier",
        [f"--model_dir={model_dir}", "--model_overrides=num_layers=1,patch_size=2",
         "--global_batch_size=16", "--train_steps=50", "--warmup_steps=5",
         "--learning_rate=1e30", "--global_clipnorm=0", "--checkpoint_every=1", "--log_every=1",
         "--keep_checkpoints=50"],
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
    assert len(backbone_keys) == 13  # embeddings, 10 block variables, final norm gamma/beta
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
