"""Text pieces shared by the MLM and fine-tuning trainers: vocabulary, tokenizer, backbone."""

import json
import os

import tensorflow as tf
from absl import logging

from keras_gmlp import data
from trainers.core import flags as flags_lib

VOCAB_FILE = "vocab.txt"


def resolve_vocabulary(fv, model_dir, is_chief, make_lines):
    """Returns the vocabulary (list of tokens) and makes sure MODEL_DIR/vocab.txt holds it.

    In order: --vocab_file; MODEL_DIR/vocab.txt of an earlier (resumed) run; a WordPiece
    vocabulary of --vocabulary_size learned from the training text.
    """
    saved = os.path.join(model_dir, VOCAB_FILE)
    if fv.vocab_file:
        vocabulary = data.load_vocabulary(fv.vocab_file)
        if is_chief and os.path.abspath(fv.vocab_file) != os.path.abspath(saved):
            tf.io.gfile.copy(fv.vocab_file, saved, overwrite=True)
        logging.info("Vocabulary: %d tokens from --vocab_file=%s", len(vocabulary), fv.vocab_file)
        return vocabulary
    if tf.io.gfile.exists(saved):
        vocabulary = data.load_vocabulary(saved)
        logging.info("Vocabulary: %d tokens from %s (earlier run)", len(vocabulary), saved)
        return vocabulary
    vocabulary = data.learn_vocabulary(make_lines(), fv.vocabulary_size, lowercase=fv.lowercase)
    if is_chief:
        data.save_vocabulary(vocabulary, saved)
    logging.info("Vocabulary: learned %d WordPiece tokens from the training text into %s",
                 len(vocabulary), saved)
    return vocabulary


def backbone_kwargs(fv, vocabulary_size, default_model):
    """Constructor arguments of the text backbone: preset, then overrides, then flags."""
    from keras_gmlp.models.presets import TEXT_PRESETS, get_preset

    kwargs = get_preset(fv.model or default_model, TEXT_PRESETS)
    kwargs.update(flags_lib.parse_overrides(fv.model_overrides))
    if fv.sequence_length:
        kwargs["sequence_length"] = fv.sequence_length
    kwargs["vocabulary_size"] = vocabulary_size
    return kwargs


def load_backbone_config(model_dir):
    """The backbone config a pretrain_mlm run wrote into its model_dir."""
    from trainers.core.loop import MODEL_CONFIG_FILE

    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--init_checkpoint: {path} is missing; expected a "
                                "trainers.pretrain_mlm model_dir.")
    with tf.io.gfile.GFile(path) as f:
        serialized = json.load(f)
    config = dict(serialized["config"])
    config.pop("name", None)
    config.pop("trainable", None)
    config.pop("dtype", None)  # the fine-tuning run's --mixed_precision decides
    return config

