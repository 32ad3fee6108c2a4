"""In-process tests of the trainers' core: flags, schedule, weight decay, strategy factory,
the model_dir lock and checkpoint bookkeeping."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from keras_gmlp.models import GMLPMaskedLM
from trainers import finetune_text_classifier
from trainers import pretrain_mlm
from trainers import train_image_classifier
from trainers.core import checkpoints
from trainers.core import controller
from trainers.core import flags as flags_lib
from trainers.core import run_dir
from trainers.core import optimization
from trainers.core import strategy as strategy_lib


def _flag_values(define):
    fv = flags.FlagValues()
    define(fv)
    return fv


@pytest.mark.parametrize(
    "define, argument, flag_name",
    [
        (pretrain_mlm.define_flags, "--train_steps=0", "--train_steps"),
        (pretrain_mlm.define_flags, "--global_batch_size=-8", "--global_batch_size"),
        (pretrain_mlm.define_flags, "--learning_rate=-1e-3", "--learning_rate"),
        (pretrain_mlm.define_flags, "--mask_rate=1.5", "--mask_rate"),
        (pretrain_mlm.define_flags, "--sequence_length=1", "--sequence_length"),
        (pretrain_mlm.define_flags, "--vocab_file=/no/such/vocab.txt", "--vocab_file"),
        (pretrain_mlm.define_flags, "--data=/no/such/dir/*.txt", "--data"),
        (pretrain_mlm.define_flags, "--model=gmlp_huge", "--model"),
        (pretrain_mlm.define_flags, "--model_overrides=num_layerz=2", "--model_overrides"),
        (pretrain_mlm.define_flags, "--model_overrides=num_layers", "--model_overrides"),
        (pretrain_mlm.define_flags, "--strategy=tpu", "--tpu"),
        (pretrain_mlm.define_flags, "--warmup_steps=5000", "--warmup_steps"),
        (pretrain_mlm.define_flags, "--mixed_precision=float16", "--mixed_precision"),
        (pretrain_mlm.define_flags, "--strategy=horovod", "--strategy"),
        (train_image_classifier.define_flags, "--model=gmlp_tiny", "--model"),
        (train_image_classifier.define_flags, "--label_smoothing=1.0", "--label_smoothing"),
        (finetune_text_classifier.define_flags, "--init_checkpoint=/no/such/dir",
         "--init_checkpoint"),
        (pretrain_mlm.define_flags, "--seed=2147483648", "--seed"),
        (pretrain_mlm.define_flags, "--learning_rate=inf", "--learning_rate"),
        (pretrain_mlm.define_flags, "--learning_rate=1e39", "--learning_rate"),
        (pretrain_mlm.define_flags, "--global_clipnorm=inf", "--global_clipnorm"),
        (pretrain_mlm.define_flags, "--weight_decay=inf", "--weight_decay"),
        (pretrain_mlm.define_flags, f"--export_dir={__file__}", "--export_dir"),
        (pretrain_mlm.define_flags, f"--export_dir={__file__}/export", "--export_dir"),
        (pretrain_mlm.define_flags, f"--model_dir={__file__}", "--model_dir"),
        (train_image_classifier.define_flags, "--mixup_alpha=inf", "--mixup_alpha"),
        (pretrain_mlm.define_flags, "--model_overrides=hidden_dim=abc", "`hidden_dim`='abc'"),
        (pretrain_mlm.define_flags, "--model_overrides=ffn_dim=63", "`ffn_dim`=63"),
        (pretrain_mlm.define_flags, "--model_overrides=dropout=2", "`dropout`=2"),
        (pretrain_mlm.define_flags, "--model_overrides=num_layers=-3", "`num_layers`=-3"),
        (pretrain_mlm.define_flags, "--model_overrides=dtype='float16'", "--mixed_precision"),
        (train_image_classifier.define_flags, "--model_overrides=patch_size=0", "`patch_size`=0"),
    ],
)
def test_bad_flag_values_fail_naming_the_flag(define, argument, flag_name, tmp_path):
    fv = _flag_values(define)
    extra = []
    if define is finetune_text_classifier.define_flags:
        (tmp_path / "x.tsv").write_text("a\t0\n")
        extra = [f"--data={tmp_path / 'x.tsv'}", "--vocab_file=" + __file__]
    with pytest.raises(flags.IllegalFlagValueError) as error:
        fv(["trainer", f"--model_dir={tmp_path}", *extra, argument])
    assert flag_name in str(error.value)


def _pretraining_dir(path, vocabulary_size):
    """What finetune_text_classifier reads from a pretrain_mlm model_dir, written by hand."""
    path.mkdir()
    (path / "model_config.json").write_text(json.dumps(
        {"class_name": "GMLPBackbone", "config": {"vocabulary_size": vocabulary_size}}))
    (path / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(vocabulary_size)))
    (path / "ckpt-1.index").write_text("")
    return path


def test_finetuning_vocabulary_must_match_the_pretrained_backbone(tmp_path):
    pretrained = _pretraining_dir(tmp_path / "mlm", 12)
    (tmp_path / "x.tsv").write_text("a\t0\n")
    (tmp_path / "vocab7.txt").write_text("".join(f"t{i}\n" for i in range(7)))
    args = ["trainer", f"--model_dir={tmp_path / 'run'}", f"--data={tmp_path / 'x.tsv'}",
            f"--init_checkpoint={pretrained}"]
    with pytest.raises(flags.IllegalFlagValueError) as error:
        _flag_values(finetune_text_classifier.define_flags)(
            [*args, f"--vocab_file={tmp_path / 'vocab7.txt'}"])
    assert "--vocab_file=" in str(error.value) and "7 tokens; expected the 12" in str(error.value)
    _flag_values(finetune_text_classifier.define_flags)(args)  # its own vocab.txt fits
    (pretrained / "vocab.txt").write_text("t0\nt1\n")  # damaged: found before training too
    with pytest.raises(flags.IllegalFlagValueError, match="2 tokens; expected the 12"):
        _flag_values(finetune_text_classifier.define_flags)(args)


def test_good_flags_parse_and_model_dir_is_required(tmp_path):
    fv = _flag_values(pretrain_mlm.define_flags)
    fv(["trainer", f"--model_dir={tmp_path}", "--model=gmlp_base",
        "--model_overrides=num_layers=2,hidden_dim=64,dropout=0.1", "--strategy=tpu",
        "--tpu=local"])
    assert fv.model == "gmlp_base" and fv.tpu == "local"
    with pytest.raises(flags.IllegalFlagValueError, match="--model_dir"):
        _flag_values(pretrain_mlm.define_flags)(["trainer"])


def test_parse_overrides_reads_literals_and_bracketed_commas():
    assert flags_lib.parse_overrides("num_layers=2, image_shape=(8, 8, 1),causal=True,x=gelu") == {
        "num_layers": 2, "image_shape": (8, 8, 1), "causal": True, "x": "gelu"}
    assert flags_lib.parse_overrides("") == {}
    with pytest.raises(ValueError, match="key=value"):
        flags_lib.parse_overrides("num_layers")


def test_flags_file_round_trips(tmp_path):
    fv = _flag_values(pretrain_mlm.define_flags)
    fv(["trainer", f"--model_dir={tmp_path}", "--train_steps=7", "--warmup_steps=2", "--decay=cosine",
        "--model_overrides=num_layers=1,hidden_dim=32"])
    run_dir.write_flags(str(tmp_path), fv)
    again = _flag_values(pretrain_mlm.define_flags)
    again(["trainer", f"--flagfile={tmp_path / run_dir.FLAGS_FILE}"])
    for name in ("train_steps", "decay", "model_overrides", "model_dir", "learning_rate"):
        assert again[name].value == fv[name].value
    with open(tmp_path / run_dir.FLAGS_JSON) as f:
        assert json.load(f)["train_steps"] == 7


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_warmup_decay_matches_its_closed_form(decay):
    peak, total, warmup, end_ratio = 2e-3, 50, 10, 0.1
    schedule = optimization.WarmupDecay(peak, total, warmup, decay, end_ratio)
    for step in [0, 1, 5, 9, 10, 11, 30, 49, 50, 80]:
        if step < warmup:
            expected = peak * step / warmup
        else:
            p = min((step - warmup) / (total - warmup), 1.0)
            shape = {"linear": 1 - p, "cosine": 0.5 * (1 + np.cos(np.pi * p)), "constant": 1.0}
            expected = peak * end_ratio + (peak - peak * end_ratio) * shape[decay]
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-12)


def test_weight_decay_skips_layer_norm_and_bias_variables():
    model = GMLPMaskedLM.from_preset("gmlp_tiny", num_layers=1, hidden_dim=16, ffn_dim=32,
                                     sequence_length=8, vocabulary_size=50)
    fv = mock.Mock(weight_decay=0.1, adam_beta_1=0.9, adam_beta_2=0.999, adam_epsilon=1e-6)
    optimizer = optimization.make_optimizer(fv, 0.5)
    variables = model.trainable_variables
    before = [np.array(v.numpy()) for v in variables]
    # Zero gradients make Adam's own update exactly zero, leaving only the decoupled decay.
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    decayed, kept = set(), set()
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if np.array_equal(new, old):
            kept.add(variable.path)
        else:
            np.testing.assert_allclose(new, old * (1 - 0.5 * 0.1), rtol=1e-6)
            decayed.add(variable.path)
    layer_norms = {v.path for v in variables if v.name in ("gamma", "beta")}
    biases = {v.path for v in variables if v.name.endswith("bias")}
    assert layer_norms and biases and layer_norms | biases == kept
    assert {"token_embedding/embeddings", "block_0/spatial_gating_unit/spatial_kernel",
            "block_0/channel_projection_u/kernel", "block_0/channel_projection_v/kernel"} <= decayed


class _FakeResolver:
    def __init__(self, tpu):
        self.tpu = tpu


@pytest.mark.parametrize("tpu, connects", [("my-tpu", True), ("grpc://10.0.0.2:8470", True),
                                           ("local", False)])
def test_tpu_strategy_factory_resolves_connects_and_initialises(tpu, connects):
    with mock.patch.object(tf.config, "experimental_connect_to_cluster") as connect, \
            mock.patch.object(tf.tpu.experimental, "initialize_tpu_system") as initialise, \
            mock.patch.object(tf.distribute, "TPUStrategy") as tpu_strategy:
        strategy = strategy_lib.make_strategy("tpu", tpu=tpu, tpu_resolver_cls=_FakeResolver)
    resolver = initialise.call_args.args[0]
    assert isinstance(resolver, _FakeResolver) and resolver.tpu == tpu
    assert connect.called == connects
    if connects:
        assert connect.call_args.args[0] is resolver
    tpu_strategy.assert_called_once_with(resolver)
    assert strategy is tpu_strategy.return_value


def test_tpu_strategy_uses_the_tpu_cluster_resolver_by_default():
    with mock.patch.object(tf.distribute.cluster_resolver, "TPUClusterResolver") as resolver_cls, \
            mock.patch.object(tf.config, "experimental_connect_to_cluster"), \
            mock.patch.object(tf.tpu.experimental, "initialize_tpu_system"), \
            mock.patch.object(tf.distribute, "TPUStrategy"):
        strategy_lib.make_strategy("tpu", tpu="my-tpu")
    resolver_cls.assert_called_once_with(tpu="my-tpu")


def test_strategy_factory_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="--tpu"):
        strategy_lib.make_strategy("tpu", tpu=None)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy_lib.make_strategy("multi_worker_mirrored")
    assert strategy_lib.make_strategy("default").num_replicas_in_sync == 1
    assert strategy_lib.make_strategy("one_device").num_replicas_in_sync == 1


def test_model_dir_lock_is_exclusive_and_released(tmp_path):
    first = run_dir.RunDirLock(str(tmp_path / "run")).acquire()
    with pytest.raises(run_dir.RunDirLocked, match=f"in use by another trainer \\(pid {os.getpid()}"):
        run_dir.RunDirLock(str(tmp_path / "run")).acquire()
    first.release()
    with run_dir.RunDirLock(str(tmp_path / "run")):
        pass


def test_model_dir_lock_through_gfile_takes_over_only_stale_locks():
    model_dir = "ram://lock_test/run"
    path = f"{model_dir}/{run_dir.LOCK_FILE}"
    first = run_dir.RunDirLock(model_dir, heartbeat_s=3600).acquire()
    with pytest.raises(run_dir.RunDirLocked, match=f"pid {os.getpid()}"):
        run_dir.RunDirLock(model_dir).acquire()
    first.release()
    assert not tf.io.gfile.exists(path)
    # A live holder's heartbeat moves on, so it is never taken for stale.
    beating = run_dir.RunDirLock(model_dir, heartbeat_s=0.01).acquire()
    with tf.io.gfile.GFile(path) as f:
        started = json.load(f)["heartbeat"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with tf.io.gfile.GFile(path) as f:
            if json.load(f)["heartbeat"] > started:
                break
    else:
        raise AssertionError("the heartbeat never moved")
    beating.release()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    holders = [
        dict(host="elsewhere", pid=1, heartbeat=time.time()),  # live: refused
        dict(host="elsewhere", pid=1, heartbeat=time.time() - 3600),  # no heartbeat for 1 h
        dict(host=socket.gethostname(), pid=dead.pid, heartbeat=time.time()),  # holder died
    ]
    for index, holder in enumerate(holders):
        run_dir.write_atomically(path, json.dumps(holder))  # ram:// appends on "w"
        lock = run_dir.RunDirLock(model_dir, stale_after_s=600)
        if index == 0:
            with pytest.raises(run_dir.RunDirLocked, match="pid 1 on elsewhere"):
                lock.acquire()
            continue
        lock.acquire()
        with tf.io.gfile.GFile(path) as f:
            assert json.load(f)["token"] == lock.token
        lock.release()


def test_partial_saves_are_removed_and_state_rewrites_keep_rotation(tmp_path):
    variable = tf.Variable(1.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=10)
    for step in (2, 4, 6):
        manager.save(checkpoint_number=step)
    (tmp_path / "ckpt-8_temp").mkdir()
    (tmp_path / "ckpt-8_temp" / "part-00000-of-00001.index").write_text("")
    assert run_dir.remove_partial_saves(str(tmp_path)) == ["ckpt-8_temp"]
    assert not (tmp_path / "ckpt-8_temp").exists()
    os.remove(tmp_path / "checkpoint")
    assert run_dir.checkpoint_steps(str(tmp_path)) == [6, 4, 2]
    run_dir.write_state(str(tmp_path), ["ckpt-2", "ckpt-4"])
    # A CheckpointManager rotates the rewritten entries like its own.
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    manager.save(checkpoint_number=6)
    manager.save(checkpoint_number=8)
    assert run_dir.read_state(str(tmp_path)) == ["ckpt-4", "ckpt-6", "ckpt-8"]
    assert not list(tmp_path.glob("ckpt-2.*"))
    checkpoints.discard(str(tmp_path), str(tmp_path / "ckpt-8"))
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")
    checkpoints.keep_newest(str(tmp_path), 1)
    assert run_dir.read_state(str(tmp_path)) == ["ckpt-6"] and not list(tmp_path.glob("ckpt-4.*"))


def test_preemption_signals_only_ask_and_never_interrupt_the_checkpoint_write(tmp_path):
    variable = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 3)
    previous = signal.getsignal(signal.SIGTERM)
    with controller.Preemption() as preemption:
        assert preemption.exit_code() == 0
        preemption.preempted(3, lambda: pytest.fail("saved without a signal"))
        os.kill(os.getpid(), signal.SIGINT)  # the first signal decides the exit code

        def save():
            variable.assign(7.0)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the save
            return manager.save(checkpoint_number=7)

        with pytest.raises(controller.Preempted, match="step 7") as raised:
            preemption.preempted(7, save)
        # Several workers: any worker's signal stops every one with its code.
        assert controller.Preemption().exit_code(agree=lambda counts: [1, 0]) == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the run's handlers are gone
    assert raised.value.exit_code == 130 and raised.value.checkpoint.endswith("ckpt-7")
    variable.assign(0.0)
    tf.train.Checkpoint(v=variable).restore(raised.value.checkpoint).assert_consumed()
    assert float(variable) == 7.0
