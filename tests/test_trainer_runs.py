"""End-to-end trainer runs in fresh processes: strategies agree, resume after SIGKILL,
fine-tuning from a pretraining checkpoint, flags file, start-up flag errors.

Faults (damaged model_dirs, concurrent runs, non-finite losses) are in test_trainer_faults.py.

Each configuration needs its own process (logical CPU devices and TF_CONFIG must be set before
TensorFlow initialises), so runs are shared through module-scoped fixtures and kept tiny.
"""

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from trainer_processes import free_ports as _free_ports
from trainer_processes import losses as _losses
from trainer_processes import model_values as _model_values
from trainer_processes import run as _run
from trainer_processes import start as _start

TRAIN_STEPS = 60
COMPARED_STEPS = 8
# A constant rate after warmup makes the first steps' learning rates independent of
# --train_steps, so the strategy comparisons can run fewer steps than the baseline.
TINY_MLM = [
    "--model=gmlp_tiny", "--model_overrides=num_layers=1,hidden_dim=32,ffn_dim=64",
    "--sequence_length=32", "--global_batch_size=8", "--warmup_steps=3", "--decay=constant",
    "--learning_rate=2e-3", "--log_every=1", "--checkpoint_every=5", "--eval_steps=1",
    "--seed=3",
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Single-replica MLM run on the default corpus; learns the vocabulary the others reuse."""
    model_dir = str(tmp_path_factory.mktemp("mlm_default"))
    _run("trainers.pretrain_mlm", [f"--model_dir={model_dir}", "--vocabulary_size=400",
                                   f"--export_dir={model_dir}/export",
                                   f"--train_steps={TRAIN_STEPS}", *TINY_MLM])
    return model_dir


def _same_run(baseline, model_dir, train_steps=TRAIN_STEPS):
    return [f"--model_dir={model_dir}", f"--vocab_file={baseline}/vocab.txt",
            f"--train_steps={train_steps}", *TINY_MLM]


def test_run_leaves_flags_checkpoints_summaries_and_export(baseline):
    with open(os.path.join(baseline, "flags.json")) as f:
        used = json.load(f)
    assert used["train_steps"] == TRAIN_STEPS and used["sequence_length"] == 32
    assert used["model_overrides"] == "num_layers=1,hidden_dim=32,ffn_dim=64"
    with open(os.path.join(baseline, "flags.txt")) as f:
        assert f"--train_steps={TRAIN_STEPS}" in f.read().split("\n")
    assert tf.train.latest_checkpoint(baseline).endswith(f"ckpt-{TRAIN_STEPS}")
    tags = set()
    for name in os.listdir(os.path.join(baseline, "train")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(baseline, "train", name)):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "train_accuracy", "steps_per_second"} <= tags
    losses = _losses(baseline)
    assert sorted(losses) == list(range(1, TRAIN_STEPS + 1))
    assert np.mean([losses[s] for s in range(51, 61)]) < np.mean([losses[s] for s in range(1, 11)])
    exports = os.listdir(os.path.join(baseline, "export"))
    assert any(os.path.isfile(os.path.join(baseline, "export", v, "saved_model.pb"))
               for v in exports)


def test_run_writes_a_keras_hub_preset_of_its_final_model(baseline):
    import keras_hub

    from keras_gmlp.models import GMLPMaskedLM
    from keras_gmlp.models import GMLPMaskedLMPreprocessor

    preset = os.path.join(baseline, "preset")
    model = keras_hub.models.MaskedLM.from_preset(preset)
    assert isinstance(model, GMLPMaskedLM)
    assert isinstance(model.preprocessor, GMLPMaskedLMPreprocessor)
    with open(os.path.join(baseline, "vocab.txt")) as f:
        assert model.preprocessor.tokenizer.get_vocabulary() == f.read().splitlines()
    assert model.preprocessor.sequence_length == 32
    # The preset holds the weights the run exported at its end: both give the same logits.
    rng = np.random.default_rng(0)
    inputs = {"token_ids": rng.integers(5, 390, (2, 32)).astype("int32"),
              "padding_mask": np.ones((2, 32), "int32"),
              "mask_positions": np.array([[1, 7, 30], [0, 2, 4]], "int32")}
    export = os.path.join(baseline, "export", sorted(os.listdir(os.path.join(baseline, "export")))[-1])
    served = tf.saved_model.load(export).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in inputs.items()})["logits"].numpy()
    np.testing.assert_allclose(np.asarray(model(inputs, training=False)), served, atol=1e-5)
    assert not [name for name in os.listdir(baseline) if name.startswith(".preset")]


def test_mirrored_two_logical_cpus_matches_one_replica(baseline, tmp_path):
    model_dir = str(tmp_path / "mirrored")
    _, output = _run("trainers.pretrain_mlm", [*_same_run(baseline, model_dir, COMPARED_STEPS),
                                               "--strategy=mirrored", "--num_cpu_devices=2"])
    assert "MirroredStrategy with 2 replica(s)" in output
    expected, got = _losses(baseline), _losses(model_dir)
    for step in range(1, COMPARED_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], rtol=1e-4, err_msg=f"step {step}")


def test_multi_worker_mirrored_two_processes_match_one_replica(baseline, tmp_path):
    model_dir = str(tmp_path / "mwms")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = [
        _start("trainers.pretrain_mlm",
               [*_same_run(baseline, model_dir, COMPARED_STEPS),
                "--strategy=multi_worker_mirrored"],
               TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                     "task": {"type": "worker", "index": index}}))
        for index in range(2)
    ]
    results = [p.wait() for p in processes]
    for returncode, output in results:
        assert returncode == 0, output[-4000:]
    outputs = [output for _, output in results]
    assert "with 2 replica(s)" in outputs[0]
    expected, got = _losses(baseline), _losses(model_dir)
    # Only the chief writes metrics; the same global batches are split over the two workers,
    # so the losses differ from one replica's only by the order of float summation.
    assert sorted(got) == list(range(1, COMPARED_STEPS + 1))
    for step in range(1, COMPARED_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], rtol=1e-4, err_msg=f"step {step}")
    assert not [name for name in os.listdir(model_dir) if name.startswith(".worker_")]


def test_sigkill_then_restart_equals_an_uninterrupted_run(baseline, tmp_path):
    model_dir = str(tmp_path / "killed")
    args = _same_run(baseline, model_dir)
    process = _start("trainers.pretrain_mlm", args)
    state_file = os.path.join(model_dir, "checkpoint")
    while not os.path.exists(state_file):  # poll: the first checkpoint is being written
        assert process.popen.poll() is None, process.wait()[1][-4000:]
    process.popen.send_signal(signal.SIGKILL)
    assert process.wait(60)[0] == -signal.SIGKILL
    killed_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert 5 <= killed_at < TRAIN_STEPS, "the run finished before it could be killed"

    _, output = _run("trainers.pretrain_mlm", args)
    assert f"at step {killed_at}." in output  # "Resumed from .../ckpt-N at step N."
    expected, got = _losses(baseline), _losses(model_dir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [expected[s] for s in sorted(expected)], rtol=1e-6)
    final, reference = (_model_values(tf.train.latest_checkpoint(d)) for d in (model_dir, baseline))
    assert final.keys() == reference.keys() and len(final) > 10
    for key in reference:
        np.testing.assert_allclose(final[key], reference[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def test_image_trainer_stops_on_a_non_finite_loss_and_keeps_no_exploded_checkpoint(tmp_path):
    model_dir = str(tmp_path / "nan")
    returncode, output = _run(
        "trainers.train_image_classifier",
        [f"--model_dir={model_dir}", "--model_overrides=num_layers=1,patch_size=2",
         "--global_batch_size=16", "--train_steps=50", "--warmup_steps=0",
         "--learning_rate=1e30", "--global_clipnorm=0", "--checkpoint_every=1", "--log_every=1",
         "--max_recoveries=0"],
        expect_ok=False)
    assert returncode == 3, output[-4000:]
    assert "Non-finite training loss" in output and "last good checkpoint is kept" in output
    losses = _losses(model_dir)
    assert all(np.isfinite(list(losses.values())))
    # Step 1's finite update gave weights of ~1e30 and step 2 a non-finite loss: the checkpoint
    # of step 1 held those weights, so it is gone and none is left.
    bad_step = max(losses) + 1
    assert f"A checkpoint of step {bad_step - 1} held the weights" in output
    assert tf.train.latest_checkpoint(model_dir) is None
    assert not [n for n in os.listdir(model_dir) if n.startswith("ckpt-")]


@pytest.mark.parametrize("init", ["model_dir", "preset"])
def test_finetuning_restores_the_pretrained_backbone(baseline, tmp_path, init):
    data = tmp_path / "train.tsv"
    rows = ["sentence\tlabel"] + [f"{'good' if i % 2 else 'bad'} value number {i}\t{i % 2}"
                                  for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    model_dir = str(tmp_path / "finetune")
    init_checkpoint = baseline if init == "model_dir" else os.path.join(baseline, "preset")
    # A zero learning rate keeps every weight (AdamW's decay is scaled by it too), so the saved
    # backbone is exactly what was loaded.
    _run("trainers.finetune_text_classifier",
         [f"--model_dir={model_dir}", f"--init_checkpoint={init_checkpoint}", f"--data={data}",
          "--global_batch_size=8", "--train_steps=1", "--warmup_steps=0", "--learning_rate=0",
          "--eval_steps=1", f"--export_dir={model_dir}/export"])
    pretrained = _model_values(tf.train.latest_checkpoint(baseline))
    finetuned = _model_values(tf.train.latest_checkpoint(model_dir))
    backbone_keys = [k for k in finetuned if not k.startswith(("model/head", "model/rng"))]
    assert "model/block_0__spatial_gating_unit__spatial_kernel/.ATTRIBUTES/VARIABLE_VALUE" in backbone_keys
    assert len(backbone_keys) == 15  # embeddings, 12 block variables (u and v apart), final norm
    for key in backbone_keys:
        np.testing.assert_array_equal(finetuned[key], pretrained[key], err_msg=key)
    # Pretraining moved the SGU bias away from its initial ones, so a match is not by chance.
    bias = "model/block_0__spatial_gating_unit__spatial_bias/.ATTRIBUTES/VARIABLE_VALUE"
    assert not np.allclose(finetuned[bias], 1.0)
    with open(os.path.join(model_dir, "vocab.txt")) as a, open(os.path.join(baseline, "vocab.txt")) as b:
        assert a.read() == b.read()
    # Its own preset predicts raw strings as its export's predict_text does: the preprocessor
    # it carries prepares text as the trainer's pipeline and the export's tokenizer do.
    import keras_hub

    classifier = keras_hub.models.TextClassifier.from_preset(os.path.join(model_dir, "preset"))
    texts = ["good value number 3", "bad value", "", "a word the corpus never had \x00 !"]
    export = os.path.join(model_dir, "export", os.listdir(os.path.join(model_dir, "export"))[0])
    served = tf.saved_model.load(export).signatures["predict_text"](text=tf.constant(texts))
    np.testing.assert_allclose(tf.nn.softmax(classifier.predict(texts)).numpy(),
                               served["probabilities"].numpy(), atol=1e-5)


def test_bad_flag_fails_at_start_up_before_reading_data(tmp_path):
    model_dir = tmp_path / "never"
    returncode, output = _run(
        "trainers.pretrain_mlm", [f"--model_dir={model_dir}", "--global_batch_size=0"],
        expect_ok=False, timeout=120)
    assert returncode != 0
    assert "--global_batch_size" in output and "expected an integer >= 1" in output
    assert not model_dir.exists()  # nothing written, no data read
    assert "default corpus" not in output


def test_image_trainer_preset_predicts_files_as_its_export(tmp_path):
    """MODEL_DIR/preset carries the evaluation/export preprocessing: keras-hub's generic
    ImageClassifier.from_preset predicts encoded files of any size as predict_image_bytes."""
    import keras_hub

    import keras_gmlp  # noqa: F401  (registers the classes keras-hub's loader looks up)

    model_dir = str(tmp_path / "digits")
    _run("trainers.train_image_classifier",
         [f"--model_dir={model_dir}", "--model_overrides=num_layers=1,patch_size=2",
          "--global_batch_size=16", "--train_steps=2", "--warmup_steps=0", "--eval_steps=1",
          f"--export_dir={model_dir}/export"])
    classifier = keras_hub.models.ImageClassifier.from_preset(os.path.join(model_dir, "preset"))
    rng = np.random.default_rng(0)
    files = [tf.io.encode_png(rng.integers(0, 256, shape, dtype=np.uint8)).numpy()
             for shape in [(8, 8, 1), (20, 13, 1), (9, 9, 3), (40, 64, 3)]]
    export = os.path.join(model_dir, "export", os.listdir(os.path.join(model_dir, "export"))[0])
    served = tf.saved_model.load(export).signatures["predict_image_bytes"](
        image_bytes=tf.constant(files))
    np.testing.assert_allclose(classifier.predict(np.array(files, dtype=object), verbose=0),
                               served["logits"].numpy(), atol=1e-5)
