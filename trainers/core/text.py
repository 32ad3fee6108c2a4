"""Text pieces shared by the MLM and fine-tuning trainers: vocabulary, tokenizer, backbone."""

import json
import os

import tensorflow as tf
from absl import logging

from keras_gmlp import data
from keras_gmlp.models import GMLPTokenizer
from keras_gmlp.models.presets import TEXT_PRESETS
from keras_gmlp.models.presets import get_preset
from trainers.core import flags as flags_lib
from trainers.core import preset
from trainers.core import run_dir

VOCAB_FILE = run_dir.VOCAB_FILE


def resolve_vocabulary(fv, model_dir, make_lines):
    """Returns the vocabulary (list of tokens); writes nothing (see `save_vocabulary`).

    In order: --vocab_file; MODEL_DIR/vocab.txt of an earlier (resumed) run; a WordPiece
    vocabulary of --vocabulary_size learned from the training text.
    """
    saved = os.path.join(model_dir, VOCAB_FILE)
    if fv.vocab_file:
        vocabulary = data.load_vocabulary(fv.vocab_file)
        logging.info("Vocabulary: %d tokens from --vocab_file=%s", len(vocabulary), fv.vocab_file)
        return vocabulary
    if tf.io.gfile.exists(saved):
        vocabulary = data.load_vocabulary(saved)
        logging.info("Vocabulary: %d tokens from %s (earlier run)", len(vocabulary), saved)
        return vocabulary
    vocabulary = data.learn_vocabulary(make_lines(), fv.vocabulary_size, lowercase=fv.lowercase)
    logging.info("Vocabulary: learned %d WordPiece tokens from the training text.",
                 len(vocabulary))
    return vocabulary


def save_vocabulary(vocabulary, model_dir):
    """Writes MODEL_DIR/vocab.txt (one token a line) atomically, unless it already holds it."""
    path = os.path.join(model_dir, VOCAB_FILE)
    text = "".join(token + "\n" for token in vocabulary)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            if f.read() == text:
                return
    run_dir.write_atomically(path, text)


def backbone_kwargs(fv, vocabulary_size, default_model):
    """Constructor arguments of the text backbone: preset, then overrides, then flags."""
    kwargs = get_preset(fv.model or default_model, TEXT_PRESETS)
    kwargs.update(flags_lib.parse_overrides(fv.model_overrides))
    if fv.sequence_length:
        kwargs["sequence_length"] = fv.sequence_length
    kwargs["vocabulary_size"] = vocabulary_size
    return kwargs


def load_backbone_config(model_dir):
    """The backbone config a pretrain_mlm run wrote into its model_dir, or the config.json of
    a keras-hub preset directory (`preset.is_preset_dir`)."""
    path = os.path.join(model_dir, run_dir.MODEL_CONFIG_FILE)
    if preset.is_preset_dir(model_dir):
        path = os.path.join(model_dir, preset.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--init_checkpoint: {path} is missing; expected a "
                                "trainers.pretrain_mlm model_dir or a keras-hub preset directory.")
    with tf.io.gfile.GFile(path) as f:
        serialized = json.load(f)
    if serialized.get("class_name") != "GMLPBackbone":
        raise ValueError(f"--init_checkpoint: {path} holds a {serialized.get('class_name')!r}; "
                         "expected a GMLPBackbone config.")
    config = dict(serialized["config"])
    config.pop("name", None)
    config.pop("trainable", None)
    config.pop("dtype", None)  # the fine-tuning run's --mixed_precision decides
    return config


def vocabulary_source(fv, init_checkpoint=None):
    """Where the run's vocabulary comes from, for error messages."""
    if fv.vocab_file:
        return f"--vocab_file={fv.vocab_file}"
    if init_checkpoint:
        return f"--init_checkpoint={init_checkpoint}"
    return "the vocabulary"


def make_tokenizer(vocabulary, lowercase, source):
    """The run's `GMLPTokenizer` (the tokenizer its preset and exports carry).

    `source` names where the vocabulary came from, for the error when it lacks a reserved token.
    """
    missing = [token for token in data.RESERVED_TOKENS if token not in vocabulary]
    if missing:
        raise ValueError(f"{source}: the vocabulary has no {', '.join(missing)}: expected the "
                         f"reserved tokens {list(data.RESERVED_TOKENS)} ([PAD] first), as "
                         "keras_gmlp.data.learn_vocabulary writes them.")
    return GMLPTokenizer(vocabulary=list(vocabulary), lowercase=lowercase)
