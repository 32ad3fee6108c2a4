"""MODEL_DIR/preset: the trained model as a keras-hub preset directory, and reading one back.

A finished run (chief only) writes its final model with the preprocessor that matches its data
pipeline (`Task.preprocessor()`), so that

    keras_hub.models.MaskedLM.from_preset(MODEL_DIR + "/preset")      # or TextClassifier,
    keras_gmlp.models.GMLPBackbone.from_preset(MODEL_DIR + "/preset")  # ImageClassifier, ...

give the trained model, ready for `fit`/`predict` on raw inputs, and `--init_checkpoint` of the
fine-tuning trainer accepts it. keras-hub's saver writes only local files, so the preset is
written to a local scratch directory and copied into place (model_dir may be gs://); the new
preset replaces an older one only once it is complete.
"""

import os
import shutil
import tempfile
import uuid

import tensorflow as tf
from absl import logging

from trainers.core.run_dir import PRESET_DIR

# Files every keras-hub backbone preset has (keras_hub.src.utils.preset_utils).
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
# A GMLPTokenizer's vocabulary inside a preset (keras-hub's WordPiece `save_assets`).
TOKENIZER_VOCABULARY = ("assets", "tokenizer", "vocabulary.txt")


def is_preset_dir(path):
    """Whether `path` is a keras-hub preset directory (its config.json and metadata.json)."""
    return all(tf.io.gfile.exists(os.path.join(path, name))
               for name in (CONFIG_FILE, METADATA_FILE))


def _copy_tree(source, target):
    tf.io.gfile.makedirs(target)
    for name in tf.io.gfile.listdir(source):
        name = name.rstrip("/")
        from_path, to_path = os.path.join(source, name), os.path.join(target, name)
        if tf.io.gfile.isdir(from_path):
            _copy_tree(from_path, to_path)
        else:
            tf.io.gfile.copy(from_path, to_path, overwrite=True)


def write_preset(model, preprocessor, model_dir):
    """Saves `model` (a keras-hub Task) and `preprocessor` as MODEL_DIR/preset; returns its path.

    The preset is staged under a scratch name and renamed into place, so MODEL_DIR/preset is
    always a whole preset (the previous one, or the new one).
    """
    target = os.path.join(model_dir, PRESET_DIR)
    staging = os.path.join(model_dir, f".{PRESET_DIR}-staging-{uuid.uuid4().hex}")
    scratch = tempfile.mkdtemp(prefix="keras_gmlp_preset_")
    try:
        # keras-hub's loader builds the task from task.json, which names its preprocessor
        # only if the task holds one when saved: lend it the run's for the save.
        previous = model.preprocessor
        model.preprocessor = preprocessor
        try:
            model.save_to_preset(scratch)
        finally:
            model.preprocessor = previous
        _copy_tree(scratch, staging)
        if tf.io.gfile.exists(target):
            retired = os.path.join(model_dir, f".{PRESET_DIR}-retired-{uuid.uuid4().hex}")
            tf.io.gfile.rename(target, retired)
            tf.io.gfile.rename(staging, target)
            tf.io.gfile.rmtree(retired)
        else:
            tf.io.gfile.rename(staging, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    logging.info("Wrote the preset directory %s (keras_hub.models.*.from_preset loads it).", target)
    return target


def local_copy(preset):
    """A local directory holding `preset` (itself when local; else a scratch copy)."""
    if "://" not in preset or preset.startswith("file://"):
        return preset
    scratch = tempfile.mkdtemp(prefix="keras_gmlp_preset_")
    _copy_tree(preset, scratch)
    return scratch
