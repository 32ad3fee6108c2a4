"""The checkpoint layout of the trainers: model variables keyed by their Keras path.

`tf.train.Checkpoint(model=keras_model)` is not enough in Keras 3.15: a functional model's
object graph only reaches some of its variables (a nested backbone's are saved solely through
the optimizer's variable list), so a checkpoint could not be read back into another model.
Keying every variable by `variable.path` ("block_0/norm/gamma", "token_embedding/embeddings")
makes a backbone's variables the same keys in a masked LM and in a classifier built on it.
"""

import os
import re

import keras
import tensorflow as tf
from absl import logging

from trainers.core import run_dir


def variable_tree(variables):
    """A trackable holding `variables` under flat keys made from their paths.

    "block_0/norm/gamma" is saved as "<root>/block_0__norm__gamma/.ATTRIBUTES/VARIABLE_VALUE".
    The keys are flat because a checkpoint stores each variable under its shortest path from
    the root, and the optimizer reaches every trainable variable at depth 3
    (optimizer/_trainable_variables/<i>): deeper model keys would never appear. Dropout
    seed-generator states are saved as rng_state_<i>: their auto-numbered names depend on what
    else the process created, their order within one model does not.
    """
    return tf.train.Checkpoint(**dict(zip(checkpoint_keys(variables), variables)))


def checkpoint_keys(variables):
    """The flat checkpoint key of each of `variables` (Keras variables of any backend)."""
    keys, seen = [], set()
    seeds = 0
    for variable in variables:
        if "seed_generator" in variable.path:
            key = f"rng_state_{seeds}"
            seeds += 1
        else:
            key = "__".join(re.sub(r"\W", "_", part) for part in variable.path.split("/"))
        if key in seen:
            raise ValueError(f"Two variables share the checkpoint key {key!r} "
                             f"(path {variable.path!r}); layer names must be unique.")
        keys.append(key)
        seen.add(key)
    return keys


def model_tree(model):
    """All of a model's variables (weights and dropout RNG state) for a tf.train.Checkpoint."""
    return variable_tree(model.variables)


def restore_backbone(backbone, checkpoint_path):
    """Reads `backbone`'s weights from a trainer checkpoint of any model built on it.

    Raises if any backbone variable is missing from the checkpoint; extra values (the other
    model's head, the optimizer) are ignored.
    """
    if keras.backend.backend() != "tensorflow":
        # Keras variables of other backends are not TensorFlow trackables: read by key.
        reader = tf.train.load_checkpoint(checkpoint_path)
        for key, variable in zip(checkpoint_keys(backbone.weights), backbone.weights):
            variable.assign(reader.get_tensor(f"model/{key}/.ATTRIBUTES/VARIABLE_VALUE"))
        return len(backbone.weights)
    reader = tf.train.Checkpoint(model=variable_tree(backbone.weights))
    status = reader.restore(checkpoint_path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return len(backbone.weights)


def _delete_files(prefix):
    for path in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.remove(path)


def discard(model_dir, prefix):
    """Deletes the checkpoint `prefix` and drops it from MODEL_DIR/checkpoint."""
    name = os.path.basename(prefix)
    _delete_files(os.path.join(model_dir, name))
    names = [n for n in run_dir.read_state(model_dir) if n != name]
    if names:
        run_dir.write_state(model_dir, names)
    elif tf.io.gfile.exists(os.path.join(model_dir, run_dir.STATE_FILE)):
        tf.io.gfile.remove(os.path.join(model_dir, run_dir.STATE_FILE))
    logging.warning("Deleted %s: its weights gave a non-finite loss.", prefix)


def keep_newest(model_dir, keep):
    """Deletes all but the `keep` newest checkpoints named in MODEL_DIR/checkpoint."""
    names = run_dir.read_state(model_dir)
    if len(names) <= keep:
        return
    run_dir.write_state(model_dir, names[-keep:])
    for name in names[:-keep]:
        _delete_files(os.path.join(model_dir, name))
