"""Text classification fine-tuning of a (pretrained) gMLP backbone, e.g. SST-2.

    python -m trainers.finetune_text_classifier --init_checkpoint=/tmp/mlm \\
        --data=train.tsv --eval_data=dev.tsv --model_dir=/tmp/sst2 --train_steps=500

    python -m trainers.finetune_text_classifier --init_checkpoint=/tmp/mlm \\
        --data=tfds:glue/sst2 --data_dir=~/tensorflow_datasets --model_dir=/tmp/sst2

--init_checkpoint is a trainers.pretrain_mlm model_dir (its latest checkpoint), a checkpoint
prefix in one, or a keras-hub preset directory of a GMLPBackbone (e.g. the MODEL_DIR/preset a
pretraining run writes, or any `save_to_preset` output with a tokenizer): the backbone config,
vocabulary and backbone weights come from it; the classification head starts fresh. The run
ends by writing MODEL_DIR/preset (classifier, preprocessor and tokenizer), which
`keras_hub.models.TextClassifier.from_preset` loads. Without it, the backbone is built
from --model / --model_overrides and --vocab_file and trained from scratch.
Data: TSV/CSV files (text and label columns; see keras_gmlp.data.classification_dataset) or
"tfds:NAME" prepared offline in --data_dir, evaluated on --eval_data (files) or --eval_split.
"""

import os

import keras
import tensorflow as tf
from keras import ops
from absl import app
from absl import flags
from absl import logging

from keras_gmlp import data
from keras_gmlp.layers import legacy
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPTextClassifierPreprocessor
from trainers.core import checkpoints
from trainers.core import export
from trainers.core import flags as flags_lib
from trainers.core import loop
from trainers.core import preset
from trainers.core import text
from trainers.core.task import Task


def _pretrain_dir(init_checkpoint):
    if tf.io.gfile.isdir(init_checkpoint):
        return init_checkpoint
    return os.path.dirname(init_checkpoint)


def _pretrained_vocabulary_file(init_checkpoint):
    """Where --init_checkpoint keeps its vocabulary: vocab.txt of a pretraining model_dir, or
    the tokenizer asset of a preset directory."""
    source_dir = _pretrain_dir(init_checkpoint)
    if preset.is_preset_dir(source_dir):
        return os.path.join(source_dir, *preset.TOKENIZER_VOCABULARY)
    return os.path.join(source_dir, text.VOCAB_FILE)


class TextClassificationTask(Task):
    """Cross-entropy over labels; accuracy."""

    default_model = flags_lib.DEFAULT_MODELS[flags_lib.TEXT]

    def prepare(self, model_dir, is_chief):
        fv = self.flags
        if fv.init_checkpoint:
            source_dir = _pretrain_dir(fv.init_checkpoint)
            self.backbone_kwargs = text.load_backbone_config(source_dir)
            if fv.sequence_length:
                self.backbone_kwargs["sequence_length"] = fv.sequence_length
            vocab_file = fv.vocab_file or _pretrained_vocabulary_file(fv.init_checkpoint)
            self.vocabulary = data.load_vocabulary(vocab_file)
        else:
            self.vocabulary = text.resolve_vocabulary(fv, model_dir, None)
            self.backbone_kwargs = text.backbone_kwargs(
                fv, len(self.vocabulary), self.default_model)
        self.sequence_length = self.backbone_kwargs["sequence_length"]
        self.tokenizer = text.make_tokenizer(self.vocabulary, fv.lowercase,
                                             text.vocabulary_source(fv, fv.init_checkpoint))
        self.text_preprocessor = GMLPTextClassifierPreprocessor(self.tokenizer,
                                                                self.sequence_length)
        info = data.classification_info(fv.data, "train", fv.data_dir)
        self.label_names = list(info["label_names"])
        self.num_classes = info["num_classes"]
        if fv.num_classes != self.num_classes:
            logging.warning("--num_classes=%d differs from the %d labels in --data; using %d.",
                            fv.num_classes, self.num_classes, self.num_classes)

    def write_run_files(self, model_dir):
        text.save_vocabulary(self.vocabulary, model_dir)

    def build_model(self):
        return GMLPTextClassifier(GMLPBackbone(**self.backbone_kwargs), self.num_classes,
                                  dropout=self.flags.classifier_dropout)

    def initialize_from_pretrained(self, model):
        fv = self.flags
        if not fv.init_checkpoint:
            return
        path = fv.init_checkpoint
        if preset.is_preset_dir(path):
            weights = os.path.join(preset.local_copy(path), preset.WEIGHTS_FILE)
            model.backbone.load_weights(weights)
            logging.info("Initialised the backbone from the preset %s.", path)
            return
        if tf.io.gfile.isdir(path):
            path = tf.train.latest_checkpoint(path)
        # Every backbone variable must be found in the masked LM's checkpoint; its head and
        # optimizer state are ignored.
        reader = tf.train.load_checkpoint(path)
        if any(legacy.OLD_NAME in name for name in reader.get_variable_to_shape_map()):
            # Written before GMLPBlock split its first projection: u and v are its halves.
            for key, variable in zip(checkpoints.checkpoint_keys(model.backbone.weights), model.backbone.weights):
                variable.assign(legacy.read_old(key, lambda k: reader.get_tensor(
                    f"model/{k}/.ATTRIBUTES/VARIABLE_VALUE"), separator="__"))
            count = len(model.backbone.weights)
        else:
            count = checkpoints.restore_backbone(model.backbone, path)
        logging.info("Initialised the backbone (%d variables) from %s.", count, path)

    def _dataset(self, source, split, batch_size, training, input_context=None):
        fv = self.flags
        texts = data.labelled_texts(
            source, batch_size, split=split, data_dir=fv.data_dir, seed=fv.seed,
            shuffle=training, repeat=training, drop_remainder=training,
            label_names=self.label_names, input_context=input_context)
        # The preprocessor that MODEL_DIR/preset carries: `fit` on raw strings and this run
        # prepare their inputs alike.
        batches = texts.map(self.text_preprocessor, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)
        return batches.prefetch(tf.data.AUTOTUNE)

    def preprocessor(self):
        return self.text_preprocessor

    def train_dataset(self, batch_size, input_context=None):
        return self._dataset(self.flags.data, "train", batch_size, True, input_context)

    def eval_dataset(self, global_batch_size):
        fv = self.flags
        if fv.eval_data:
            return self._dataset(fv.eval_data, "train", global_batch_size, False)
        if fv.data.startswith("tfds:"):
            return self._dataset(fv.data, fv.eval_split, global_batch_size, False)
        return None  # files have no splits: pass --eval_data

    def loss_terms(self, model, batch, training):
        x, labels = batch
        labels = ops.cast(labels, "int32")
        logits = model(x, training=training)
        losses = ops.cast(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True), "float32")
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), "int32"), labels), "float32")
        loss_sum = ops.sum(losses)
        count = ops.cast(ops.shape(labels)[0], "float32")
        return loss_sum, count, dict(loss_sum=loss_sum, count=count, correct=ops.sum(hits))

    def metrics(self, sums):
        count = max(sums["count"], 1e-12)
        return dict(loss=sums["loss_sum"] / count, accuracy=sums["correct"] / count)

    def export(self, model, export_dir):
        return export.export(model, export_dir, tokenizer=self.tokenizer,
                             label_names=self.label_names, top_k=min(5, self.num_classes))


main = loop.main_for(TextClassificationTask)


def define_flags(fv=flags.FLAGS):
    flags_lib.define_common_flags(fv)
    flags_lib.define_text_flags(fv)
    flags_lib.define_finetune_flags(fv)
    flags_lib.register_validators(flags_lib.TEXT, fv)
    flags.register_validator(
        "data", lambda value: bool(value),
        message="--data: required (a TSV/CSV file glob, or tfds:NAME such as tfds:glue/sst2 "
        "with --data_dir)", flag_values=fv)
    flags.register_multi_flags_validator(
        ["init_checkpoint", "vocab_file"],
        lambda values: bool(values["init_checkpoint"] or values["vocab_file"]),
        message="--init_checkpoint or --vocab_file: one is required (the vocabulary comes from "
        "the pretraining model_dir, or from --vocab_file when training from scratch)",
        flag_values=fv)
    flags.register_multi_flags_validator(
        ["init_checkpoint", "vocab_file"], _vocabulary_fits_backbone, flag_values=fv)


def _vocabulary_fits_backbone(values):
    """The vocabulary used with --init_checkpoint must be the size its backbone embeds."""
    if not values["init_checkpoint"]:
        return True
    source_dir = _pretrain_dir(values["init_checkpoint"])
    try:
        config = text.load_backbone_config(source_dir)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise flags.ValidationError(str(error)) from None
    vocab_file = values["vocab_file"] or _pretrained_vocabulary_file(values["init_checkpoint"])
    try:
        size = len(data.load_vocabulary(vocab_file))
    except (ValueError, UnicodeDecodeError) as error:
        raise flags.ValidationError(f"vocabulary {vocab_file}: {error}") from None
    expected = config.get("vocabulary_size")
    if expected is not None and size != expected:
        name = f"--vocab_file={vocab_file}" if values["vocab_file"] else vocab_file
        raise flags.ValidationError(
            f"{name}: {size} tokens; expected the {expected} tokens of the pretrained "
            f"backbone in --init_checkpoint={values['init_checkpoint']} (its "
            "backbone config's vocabulary_size), or leave --vocab_file unset to use its "
            "vocabulary.")
    return True


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(flags_lib)  # --helpshort lists the shared flags too
    app.run(main)
