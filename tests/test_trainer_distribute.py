"""Many steps per tf.function call (--steps_per_loop), the XLA-compiled train step, and
per-worker input under MultiWorkerMirroredStrategy (1 worker vs 2 workers vs 2 mirrored
replicas; SIGKILL of a worker and restart of both).

The loop tests run the trainer in this process (default strategy); every distributed run is
its own process (TF_CONFIG and logical CPUs must be set before TensorFlow initialises), kept to
a tiny image model on the digits default.
"""

import json
import os
import shutil
import signal
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from trainer_processes import TrainerProcess
from trainer_processes import free_ports as _free_ports
from trainer_processes import losses
from trainer_processes import model_values
from trainers import train_image_classifier
from trainers.core import controller
from trainers.core import loop
from trainers.core import run_dir

TINY_IMAGE = [
    "--model_overrides=num_layers=1,patch_size=2,hidden_dim=32,ffn_dim=64",
    "--global_batch_size=16", "--warmup_steps=2", "--decay=constant", "--learning_rate=2e-3",
    "--eval_steps=1", "--seed=5",
]


def _flag_values(model_dir, *args):
    fv = flags.FlagValues()
    train_image_classifier.define_flags(fv)
    fv(["trainer", f"--model_dir={model_dir}", *TINY_IMAGE, *args])
    return fv


# --- loop boundaries and many steps per call (in this process) -------------------------------

def _loop_ends(train_steps, start=0, **intervals):
    fv = types.SimpleNamespace(train_steps=train_steps, **intervals)
    ends, step = [], start
    while step < train_steps:
        length = controller.loop_length(step, start, fv)
        assert 1 <= length <= fv.steps_per_loop
        step += length
        ends.append(step)
    return ends


def test_loops_end_at_every_log_checkpoint_and_eval_step():
    ends = _loop_ends(120, steps_per_loop=100, log_every=30, checkpoint_every=50, eval_every=0)
    assert ends == [1, 30, 50, 60, 90, 100, 120]  # first step alone; 120 is a shorter last loop
    ends = _loop_ends(23, steps_per_loop=5, log_every=1000, checkpoint_every=1000, eval_every=7)
    assert ends == [1, 5, 7, 10, 14, 15, 20, 21, 23]
    # A resumed run starts from its checkpoint step, again with one step alone.
    assert _loop_ends(20, start=10, steps_per_loop=4, log_every=5, checkpoint_every=5,
                      eval_every=0) == [11, 12, 15, 16, 20]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_steps_per_loop_must_be_positive(value, tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="--steps_per_loop"):
        _flag_values(tmp_path, f"--steps_per_loop={value}")


def _train(model_dir, *args, task_class=train_image_classifier.ImageClassificationTask):
    return loop.run(task_class(_flag_values(model_dir, "--train_steps=20", "--log_every=5",
                                            "--checkpoint_every=5", "--keep_checkpoints=10",
                                            *args)))


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory):
    """The same 20 steps at 1 and at 5 steps per tf.function call."""
    one, many = (str(tmp_path_factory.mktemp(name)) for name in ("one_step", "five_steps"))
    _train(one, "--steps_per_loop=1")
    _train(many, "--steps_per_loop=5")
    return one, many


def test_steps_per_loop_gives_the_losses_of_one_step_per_call(loop_runs):
    one, many = loop_runs
    expected, got = losses(one), losses(many)
    assert sorted(got) == sorted(expected) == [1, 5, 10, 15, 20]
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [expected[s] for s in sorted(got)], rtol=1e-6)
    for step in (10, 20):
        a, b = (model_values(os.path.join(d, f"ckpt-{step}")) for d in (one, many))
        assert len(a) > 5
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)


class _NaNImagesAtStep8(train_image_classifier.ImageClassificationTask):
    """The 8th training batch holds NaN pixels (a corrupt record), the rest are the digits."""

    def train_dataset(self, batch_size, input_context=None):
        dataset = super().train_dataset(batch_size, input_context)
        nan = tf.constant(float("nan"))
        return dataset.enumerate().map(
            lambda index, batch: (tf.where(index == 7, batch[0] * nan, batch[0]), batch[1]))


def test_nan_inside_a_loop_stops_there_and_keeps_the_last_good_checkpoint(loop_runs, tmp_path):
    model_dir = str(tmp_path / "nan")
    with pytest.raises(controller.NonFiniteLossError, match="at step 8;") as error:
        _train(model_dir, "--steps_per_loop=5", "--max_recoveries=0",
               task_class=_NaNImagesAtStep8)
    assert "last good checkpoint is kept" in str(error.value)
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-5")
    assert not os.path.exists(os.path.join(model_dir, "ckpt-10.index"))
    assert sorted(losses(model_dir)) == [1, 5]
    # ckpt-5 is what the run without the bad batch saved at step 5.
    got, expected = (model_values(os.path.join(d, "ckpt-5")) for d in (model_dir, loop_runs[1]))
    for key in expected:
        assert np.all(np.isfinite(got[key])), key
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-7, err_msg=key)


class _WithoutBatches6To8(train_image_classifier.ImageClassificationTask):
    """The digits without the 6th to 8th training batches: what a recovered run should see."""

    def train_dataset(self, batch_size, input_context=None):
        dataset = super().train_dataset(batch_size, input_context)
        return dataset.enumerate().filter(
            lambda index, batch: tf.logical_or(index < 5, index > 7)).map(
            lambda index, batch: batch)


def test_a_nan_batch_is_recovered_from_and_the_run_matches_one_without_its_window(
        loop_runs, tmp_path):
    recovered, reference = str(tmp_path / "recovered"), str(tmp_path / "reference")
    _train(recovered, "--steps_per_loop=5", "--max_recoveries=1", task_class=_NaNImagesAtStep8)
    _train(reference, "--steps_per_loop=5", task_class=_WithoutBatches6To8)
    # ckpt-5 restored; the batches of steps 6-8 (the poisoned one last) are skipped.
    with open(os.path.join(recovered, run_dir.RECOVERIES_FILE)) as f:
        windows = json.load(f)
    assert [(w["restored_step"], w["failed_step"], w["skipped_batches"]) for w in windows] == [
        (5, 8, 3)]
    got, expected = losses(recovered), losses(reference)
    np.testing.assert_allclose([got[s] for s in (10, 15, 20)], [expected[s] for s in (10, 15, 20)],
                               rtol=1e-6)
    a, b = (model_values(os.path.join(d, "ckpt-20")) for d in (recovered, reference))
    assert a.keys() == b.keys() and len(a) > 5
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The uninterrupted run (which saw those batches) differs: the window really was skipped.
    assert losses(loop_runs[1])[10] != got[10]


def test_the_whole_train_step_compiles_with_xla_and_matches(tmp_path):
    """TPUs compile each replica's step with XLA; here it is compiled for the CPU."""
    strategy = tf.distribute.get_strategy()
    results = {}
    for jit in (False, True):
        task = train_image_classifier.ImageClassificationTask(
            _flag_values(tmp_path, "--train_steps=3", "--global_clipnorm=0.5"))
        task.prepare(str(tmp_path), True)
        keras.utils.set_random_seed(0)
        model = task.build_model()
        optimizer = keras.optimizers.AdamW(1e-3)
        optimizer.build(model.trainable_variables)
        train_loop = loop.make_train_loop(task, model, optimizer, strategy, 0.5, True,
                                          jit_compile=jit)
        iterator = iter(task.train_dataset(16))
        if jit:
            hlo = train_loop.replica_step.experimental_get_compiler_ir(
                next(iter(task.train_dataset(16))))(stage="hlo")
            assert "HloModule" in hlo and "dot(" in hlo
        outputs = [train_loop(iterator, tf.constant(1)) for _ in range(3)]
        results[jit] = ([(float(loss), float(norm)) for _, loss, _, norm, _ in outputs],
                        [v.numpy() for v in model.trainable_variables])
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-4)
    for compiled, plain in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


# --- per-worker input: 1 worker, 2 workers, 2 mirrored replicas (one process each) -----------

COMPARED_STEPS = 10
RUN_STEPS = 30


def _Process(args, log_path, **env):
    """An image-trainer process whose output goes to `log_path`."""
    return TrainerProcess("trainers.train_image_classifier", [*TINY_IMAGE, *args], log_path,
                          **env)


def _run_ok(*processes):
    outputs = []
    for process in processes:
        # Generous: start-up alone took minutes on a loaded machine.
        returncode, output = process.wait(timeout=900)
        assert returncode == 0, output[-4000:]
        outputs.append(output)
    return outputs


def _workers(model_dir, args, tag):
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    return [
        _Process([f"--model_dir={model_dir}", "--strategy=multi_worker_mirrored", *args],
                 f"{model_dir}.{tag}{index}.log",
                 TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                       "task": {"type": "worker", "index": index}}))
        for index in range(2)
    ]


EVERY_STEP = ["--log_every=1", "--checkpoint_every=5", "--steps_per_loop=1"]


@pytest.fixture(scope="module")
def one_replica(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("one_replica") / "run")
    _run_ok(_Process([f"--model_dir={model_dir}", f"--train_steps={COMPARED_STEPS}",
                      *EVERY_STEP], model_dir + ".log"))
    return model_dir


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """2 localhost MWMS workers with per-worker input (the default), uninterrupted."""
    model_dir = str(tmp_path_factory.mktemp("two_workers") / "run")
    outputs = _run_ok(*_workers(model_dir, [f"--train_steps={RUN_STEPS}", *EVERY_STEP], "w"))
    return model_dir, outputs


def test_two_workers_with_per_worker_input_match_one_replica(one_replica, two_workers):
    model_dir, outputs = two_workers
    assert "with 2 replica(s)" in outputs[0]
    # Each worker's pipeline makes only its half of every global batch.
    for index, output in enumerate(outputs):
        assert f"pipeline ({index} of 2) reads 8 of every 16 examples" in output
    expected, got = losses(one_replica), losses(model_dir)
    assert sorted(got) == list(range(1, RUN_STEPS + 1))
    # Global batch t holds the same 16 examples for 1 and 2 pipelines (elements 16t..16t+15;
    # worker p takes the ones = p mod 2), so only the float summation order differs.
    for step in range(1, COMPARED_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], rtol=1e-4, err_msg=f"step {step}")
    # Worker 1 kept its own iterator beside the chief's checkpoints; no throwaway copies stay.
    assert os.path.exists(os.path.join(controller.worker_input_dir(model_dir, 1),
                                       f"ckpt-{RUN_STEPS}.index"))
    assert not [name for name in os.listdir(model_dir) if name.startswith(".worker_")]


def test_two_mirrored_replicas_match_one_replica(one_replica, tmp_path):
    model_dir = str(tmp_path / "mirrored")
    output, = _run_ok(_Process([f"--model_dir={model_dir}", f"--train_steps={COMPARED_STEPS}",
                                "--strategy=mirrored", "--num_cpu_devices=2", *EVERY_STEP],
                               model_dir + ".log"))
    assert "MirroredStrategy with 2 replica(s)" in output
    expected, got = losses(one_replica), losses(model_dir)
    for step in range(1, COMPARED_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], rtol=1e-4, err_msg=f"step {step}")


def test_sigkill_of_a_worker_then_restart_of_both_resumes_exactly(two_workers, tmp_path):
    reference, _ = two_workers
    model_dir = str(tmp_path / "killed")
    # Five steps per call and per log line: the while loop runs under MWMS too.
    args = [f"--train_steps={RUN_STEPS}", "--log_every=5", "--checkpoint_every=5",
            "--steps_per_loop=5"]
    chief, worker = _workers(model_dir, args, "first")
    state_file = os.path.join(model_dir, "checkpoint")
    while not os.path.exists(state_file):  # poll: the chief's first checkpoint is being written
        assert chief.popen.poll() is None and worker.popen.poll() is None, (
            chief.wait(900)[1][-3000:] + worker.wait(900)[1][-3000:])
    worker.popen.send_signal(signal.SIGKILL)
    chief.popen.send_signal(signal.SIGKILL)  # it would wait for the dead worker's collectives
    assert worker.wait(60)[0] == chief.wait(60)[0] == -signal.SIGKILL
    killed_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert 5 <= killed_at < RUN_STEPS, "the run finished before it could be killed"

    outputs = _run_ok(*_workers(model_dir, args, "restart"))
    for output in outputs:
        assert f"at step {killed_at}." in output  # "Resumed from .../ckpt-N at step N."
    expected, got = losses(reference), losses(model_dir)
    # Each process logs its first step on its own, then every 5th.
    assert {1, killed_at + 1, *range(5, RUN_STEPS + 1, 5)} == set(got)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                               rtol=1e-6)
    final, uninterrupted = (model_values(tf.train.latest_checkpoint(d))
                            for d in (model_dir, reference))
    assert final.keys() == uninterrupted.keys() and len(final) > 5
    for key in uninterrupted:
        np.testing.assert_allclose(final[key], uninterrupted[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def test_a_restart_with_another_worker_count_is_refused(two_workers, tmp_path):
    reference, _ = two_workers
    model_dir = str(tmp_path / "copy")
    shutil.copytree(reference, model_dir)
    before = sorted(os.listdir(model_dir))
    fv = _flag_values(model_dir, f"--train_steps={RUN_STEPS + 5}", *EVERY_STEP)
    with pytest.raises(run_dir.RunDirError, match=r"ckpt-30 was saved with 2 input "
                       r"pipeline\(s\).*this run has 1.*--nocheckpoint_iterator"):
        loop.run(train_image_classifier.ImageClassificationTask(fv))
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{RUN_STEPS}")
    assert sorted(os.listdir(model_dir)) == before


def test_sigterm_to_one_worker_stops_both_at_one_checkpointed_step_and_both_resume_exactly(
        two_workers, tmp_path):
    reference, _ = two_workers
    model_dir = str(tmp_path / "preempted")
    args = [f"--train_steps={RUN_STEPS}", *EVERY_STEP]
    chief, worker = _workers(model_dir, args, "first")
    deadline = time.monotonic() + 600
    while " parameters." not in open(worker.log_path).read():  # built, not yet trained
        assert chief.popen.poll() is None and worker.popen.poll() is None, (
            chief.wait(900)[1][-3000:] + worker.wait(900)[1][-3000:])
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.popen.send_signal(signal.SIGTERM)  # the chief gets no signal: the workers agree
    (chief_code, chief_output), (worker_code, worker_output) = chief.wait(900), worker.wait(900)
    assert chief_code == worker_code == 143, chief_output[-3000:] + worker_output[-3000:]
    saved = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert saved < RUN_STEPS and max(losses(model_dir)) == saved
    for output in (chief_output, worker_output):
        assert f"SIGTERM received: saved a checkpoint of step {saved} " in output
    # The worker's own iterator was saved with the chief's checkpoint of that step.
    assert os.path.exists(os.path.join(controller.worker_input_dir(model_dir, 1),
                                       f"ckpt-{saved}.index"))

    outputs = _run_ok(*_workers(model_dir, args, "restart"))
    for output in outputs:
        assert f"at step {saved}." in output
    expected, got = losses(reference), losses(model_dir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                               rtol=1e-6)
    final, first = (model_values(os.path.join(d, f"ckpt-{RUN_STEPS}"))
                    for d in (model_dir, reference))
    for key in first:
        np.testing.assert_allclose(final[key], first[key], rtol=1e-5, atol=1e-7, err_msg=key)
