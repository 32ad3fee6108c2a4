"""Faults a trainer's model_dir must survive, each in fresh trainer processes.

A finished tiny run (checkpoints 2, 4, 6) is copied, damaged or raced, and the trainer run on
the copy again; the truth is the finished run itself: a resumed run must repeat its losses
step for step, and whatever it did not restore must be on disk as it was.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from trainer_processes import losses
from trainer_processes import model_values
from trainer_processes import run
from trainer_processes import start
from trainers.core import run_dir

MLM = "trainers.pretrain_mlm"
# A constant rate makes a resumed run's steps equal the finished run's whatever --train_steps.
TINY = ["--model=gmlp_tiny", "--model_overrides=num_layers=1,hidden_dim=32,ffn_dim=64",
        "--sequence_length=32", "--global_batch_size=8", "--warmup_steps=0", "--decay=constant",
        "--learning_rate=2e-3", "--log_every=1", "--checkpoint_every=2", "--keep_checkpoints=3",
        "--eval_steps=1", "--seed=3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("faults") / "finished")
    run(MLM, [f"--model_dir={model_dir}", "--vocabulary_size=300", "--train_steps=6", *TINY])
    return model_dir


def _copy(finished, tmp_path, name):
    model_dir = str(tmp_path / name)
    shutil.copytree(finished, model_dir)
    return model_dir


def _fingerprint(model_dir):
    """md5 of every file the trainer keeps in model_dir (not its logs or summaries)."""
    digests = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*"))):
        if os.path.isfile(path) and not path.endswith(("metrics.jsonl", ".lock")):
            with open(path, "rb") as f:
                digests[os.path.basename(path)] = hashlib.md5(f.read()).hexdigest()
    return digests


def _lose_state_and_newest_index(model_dir):
    os.remove(os.path.join(model_dir, "checkpoint"))
    os.remove(os.path.join(model_dir, "ckpt-6.index"))


def _garble_state_and_truncate_newest_data(model_dir):
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write("\x00\x01 not a text proto {{{\n")
    data = os.path.join(model_dir, "ckpt-6.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)


@pytest.mark.parametrize("damage", [_lose_state_and_newest_index,
                                    _garble_state_and_truncate_newest_data])
def test_damaged_state_or_newest_checkpoint_resumes_from_the_newest_that_restores(
        finished, tmp_path, damage):
    model_dir = _copy(finished, tmp_path, damage.__name__)
    damage(model_dir)
    # What a save killed mid-way leaves behind.
    os.makedirs(os.path.join(model_dir, "ckpt-8_temp"))
    open(os.path.join(model_dir, "ckpt-8_temp", "part-00000-of-00001.index"), "w").close()
    kept = {k: v for k, v in _fingerprint(model_dir).items() if k.startswith("ckpt-4.")}

    _, output = run(MLM, [f"--model_dir={model_dir}", "--train_steps=8", *TINY])
    assert "Skipping checkpoint" in output and "ckpt-6" in output
    assert f"Resumed from {model_dir}/ckpt-4 at step 4." in output
    assert "step 5/8" in output and "step 1/8" not in output  # not started over
    expected, got = losses(finished), losses(model_dir)
    np.testing.assert_allclose([got[5], got[6]], [expected[5], expected[6]], rtol=1e-6)
    assert {k: v for k, v in _fingerprint(model_dir).items() if k in kept} == kept
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-8")
    assert run_dir.read_state(model_dir) == ["ckpt-4", "ckpt-6", "ckpt-8"]
    assert not glob.glob(os.path.join(model_dir, "*_temp*"))


def test_no_restorable_checkpoint_fails_naming_each_and_how_to_start_afresh(tmp_path):
    variable = tf.Variable(1.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=5)
    for step in (1, 2):
        manager.save(checkpoint_number=step)
    with open(tmp_path / "ckpt-2.index", "wb") as f:
        f.write(b"garbage" * 10)
    os.remove(tmp_path / "ckpt-1.index")
    steps = run_dir.checkpoint_steps(str(tmp_path))
    assert steps == [2, 1]  # the data file alone still shows that ckpt-1 existed
    with pytest.raises(run_dir.RunDirError) as error:
        run_dir.restore_newest(steps, lambda path: checkpoint.restore(path).assert_consumed(),
                               str(tmp_path))
    message = str(error.value)
    assert "ckpt-2: " in message and "ckpt-1: " in message
    assert "Nothing was changed" in message and "another --model_dir" in message
    # The newest that restores wins, and the value really comes from it.
    manager.save(checkpoint_number=3)
    variable.assign(5.0)
    assert run_dir.restore_newest([3, 2, 1], lambda p: checkpoint.restore(p), str(tmp_path)) == 3
    assert float(variable) == 1.0


def test_resume_with_other_settings_fails_naming_both_values_and_changes_nothing(
        finished, tmp_path):
    model_dir = _copy(finished, tmp_path, "other_settings")
    before = _fingerprint(model_dir)
    with open(os.path.join(finished, "vocab.txt")) as f:
        stored_vocab = f.read().splitlines()
    other_vocab = stored_vocab[:40]
    size = len(stored_vocab)
    (tmp_path / "vocab40.txt").write_text("\n".join(other_vocab) + "\n")
    returncode, output = run(
        MLM, [f"--model_dir={model_dir}", "--train_steps=8", *TINY,
              "--model_overrides=num_layers=1,hidden_dim=48,ffn_dim=64", "--sequence_length=16",
              "--global_batch_size=4", f"--vocab_file={tmp_path / 'vocab40.txt'}"],
        expect_ok=False)
    assert returncode != 0
    assert "backbone hidden_dim: 32 in the stored run, 48 from --model" in output
    assert "backbone sequence_length: 32 in the stored run, 16 from" in output
    assert f"backbone vocabulary_size: {size} in the stored run, 40 from --vocab_file=" in output
    assert "global_batch_size: 8 in the stored run, 4 from --global_batch_size=4" in output
    assert f"vocabulary: {size} entries in the stored run, 40 entries from --vocab_file" in output
    assert _fingerprint(model_dir) == before


def test_a_second_trainer_on_a_locked_model_dir_fails_and_a_killed_holder_frees_it(
        finished, tmp_path):
    model_dir = _copy(finished, tmp_path, "locked")
    # Logs its first step only and saves no checkpoint while it runs.
    first = start(MLM, [f"--model_dir={model_dir}", *TINY, "--train_steps=100000",
                        "--log_every=100000", "--checkpoint_every=100000"])
    lock_path = os.path.join(model_dir, run_dir.LOCK_FILE)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:  # poll until the first one holds the model_dir
            assert first.popen.poll() is None, first.wait()[1][-4000:]
            if "step 7/" in open(first.log_path).read():
                break  # training: it has the lock (or, without locks, is writing anyway)
            time.sleep(0.05)
        returncode, output = run(MLM, [f"--model_dir={model_dir}", "--train_steps=8", *TINY],
                                 expect_ok=False)
        assert first.popen.poll() is None, "the first run must still be training"
    finally:
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(60)
    assert returncode != 0
    assert f"in use by another trainer (pid {first.popen.pid}" in output
    # The kernel released the SIGKILLed holder's lock: the next run is not blocked by it.
    with open(lock_path) as f:
        assert json.load(f)["pid"] == first.popen.pid
    run_dir.RunDirLock(model_dir).acquire().release()


def test_non_finite_step_is_never_applied_or_kept_and_the_kept_checkpoint_resumes(
        finished, tmp_path):
    model_dir = _copy(finished, tmp_path, "nan")
    exploding = [f"--model_dir={model_dir}", *TINY, "--train_steps=20", "--checkpoint_every=1",
                 "--keep_checkpoints=2"]
    # Step 7 starts from good weights and its update explodes them (finite, but step 8's loss
    # is not). Two replicas: the skipped update goes through the cross-replica (merge_call) path.
    # Each recovery goes back to ckpt-6 and explodes again on the next batches: after two the
    # run stops as without recoveries.
    returncode, output = run(MLM, [*exploding, "--learning_rate=1e9", "--strategy=mirrored",
                                   "--num_cpu_devices=2", "--max_recoveries=2"], expect_ok=False)
    assert returncode == 3, output[-4000:]
    assert "Non-finite training loss" in output and "last good checkpoint is kept" in output
    assert output.count("Recovered: resumed from ckpt-6") == 2, output[-4000:]
    assert "--max_recoveries=2: 2 recoveries in this process were used up" in output
    kept = tf.train.latest_checkpoint(model_dir)
    for index in glob.glob(os.path.join(model_dir, "ckpt-*.index")):
        for key, value in model_values(index[:-len(".index")]).items():
            if value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), (index, key)
    # The kept checkpoint holds weights whose loss was finite: here the last good run's.
    assert kept == os.path.join(model_dir, "ckpt-6"), output[-4000:]
    reference = model_values(os.path.join(finished, "ckpt-6"))
    for key, value in model_values(kept).items():
        np.testing.assert_array_equal(value, reference[key], err_msg=key)

    # Restarting from it as the message advises trains on with finite losses.
    _, output = run(MLM, [*exploding, "--train_steps=9"])
    assert "at step 6." in output
    assert all(np.isfinite(losses(model_dir)[step]) for step in (7, 8, 9))


def _wait_for(process, text):
    """Polls the process's log until `text` appears (the process must still be running)."""
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        assert process.popen.poll() is None, process.wait()[1][-4000:]
        with open(process.log_path) as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {process.log_path}")


def test_sigterm_saves_the_current_step_exits_143_and_the_restart_equals_the_finished_run(
        finished, tmp_path):
    model_dir = str(tmp_path / "preempted")
    # A far --train_steps: only the signal ends this run (the rate is constant, so its steps
    # are the finished run's).
    process = start(MLM, [f"--model_dir={model_dir}", "--vocabulary_size=300",
                          "--train_steps=100000", *TINY])
    _wait_for(process, " parameters.")  # built; its first loop (one step) is ahead
    process.popen.send_signal(signal.SIGTERM)
    process.popen.send_signal(signal.SIGTERM)  # a second notice changes nothing
    returncode, output = process.wait(600)
    assert returncode == 143, output[-4000:]
    saved = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert f"SIGTERM received: saved a checkpoint of step {saved} " in output
    assert 1 <= saved < 6, "the signal came too late for the comparison"
    assert max(losses(model_dir)) == saved  # nothing was trained past the saved step

    _, output = run(MLM, [f"--model_dir={model_dir}", "--vocabulary_size=300",
                          "--train_steps=6", *TINY])
    assert f"Resumed from {model_dir}/ckpt-{saved} at step {saved}." in output
    expected, got = losses(finished), losses(model_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [expected[s] for s in sorted(got)], rtol=1e-6)
    final, reference = (model_values(os.path.join(d, "ckpt-6")) for d in (model_dir, finished))
    assert final.keys() == reference.keys() and len(final) > 5
    for key in reference:
        np.testing.assert_array_equal(final[key], reference[key], err_msg=key)
