"""In-process tests of the trainers' core: flags, schedule, weight decay, strategy factory."""

import json
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from keras_gmlp.models import GMLPMaskedLM
from trainers import finetune_text_classifier
from trainers import pretrain_mlm
from trainers import train_image_classifier
from trainers.core import flags as flags_lib
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
    flags_lib.write_flags(str(tmp_path), fv)
    again = _flag_values(pretrain_mlm.define_flags)
    again(["trainer", f"--flagfile={tmp_path / flags_lib.FLAGS_FILE}"])
    for name in ("train_steps", "decay", "model_overrides", "model_dir", "learning_rate"):
        assert again[name].value == fv[name].value
    with open(tmp_path / flags_lib.FLAGS_JSON) as f:
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
            "block_0/channel_projection_in/kernel"} <= decayed


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
