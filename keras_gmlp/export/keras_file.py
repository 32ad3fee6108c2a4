"""`.keras` files that also record the keras_gmlp version and the model config."""

import io
import json
import os
import zipfile

import tensorflow as tf

from keras_gmlp.export.common import METADATA_FILENAME
from keras_gmlp.export.common import model_metadata


def save_keras(model, filepath, **save_kwargs):
    """`model.save(filepath)` plus a `keras_gmlp.json` entry in the archive.

    The entry holds the keras_gmlp, Keras, keras-hub and TensorFlow versions
    and the serialized model config (the same record as a SavedModel
    export's `assets/keras_gmlp.json`). `keras.saving.load_model` ignores it.

    Args:
        model: a Keras model.
        filepath: path ending in ".keras".
        **save_kwargs: passed to `model.save`.

    Returns:
        `filepath`.
    """
    filepath = os.fspath(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError(f"`filepath` must end in '.keras', got {filepath!r}.")
    model.save(filepath, **save_kwargs)
    metadata = json.dumps(model_metadata(model), indent=2, sort_keys=True, default=str)
    if "://" not in filepath:
        with zipfile.ZipFile(filepath, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_FILENAME, metadata)
        return filepath
    # Object stores cannot append in place: rewrite the archive through tf.io.gfile.
    with tf.io.gfile.GFile(filepath, "rb") as f:
        buffer = io.BytesIO(f.read())
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(METADATA_FILENAME, metadata)
    with tf.io.gfile.GFile(filepath, "wb") as f:
        f.write(buffer.getvalue())
    return filepath


def read_keras_metadata(filepath):
    """The `keras_gmlp.json` record of a `.keras` file written by `save_keras`, or None."""
    with tf.io.gfile.GFile(os.fspath(filepath), "rb") as f, zipfile.ZipFile(f) as archive:
        if METADATA_FILENAME not in archive.namelist():
            return None
        return json.loads(archive.read(METADATA_FILENAME).decode("utf-8"))


__all__ = ["read_keras_metadata", "save_keras"]
