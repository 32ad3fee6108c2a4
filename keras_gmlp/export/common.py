"""Plumbing shared by the SavedModel exporters: versioned directories, assets, metadata, top-k.

Exports are written with `tf.Module` + `tf.saved_model.save` rather than
`keras.export.ExportArchive`: every ExportArchive endpoint becomes a serving
signature, and it offers no public way to attach named `tf.saved_model.Asset`
objects or a signature-free function, both of which an export needs to carry
its vocabulary, label names and build metadata. The module below does what
ExportArchive does for the model itself (it tracks the model's variables, not
the Keras objects, so loading needs TensorFlow only).
"""

import json
import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_gmlp.kernels import disabled as fusion_disabled
from keras_gmlp.version import __version__

METADATA_FILENAME = "keras_gmlp.json"
VOCABULARY_FILENAME = "vocabulary.txt"
LABELS_FILENAME = "labels.txt"


def model_metadata(model, **extra):
    """The build record of `model`: versions, class and full serialized config."""
    import keras_hub

    return {
        "keras_gmlp_version": __version__,
        "keras_version": keras.__version__,
        "keras_hub_version": keras_hub.__version__,
        "tensorflow_version": tf.__version__,
        "model_class": type(model).__name__,
        "model": keras.saving.serialize_keras_object(model),
        **extra,
    }


def _inference_call(model):
    def call(inputs):
        return model(inputs, training=False)

    return call


def _json(value):
    # Configs may hold tuples and numpy scalars; `default=str` keeps anything odd readable.
    return json.dumps(value, indent=2, sort_keys=True, default=str)


class ServingModule(tf.Module):
    """The root object of an export: the model's variables, assets, tables and signatures.

    Loaded with `tf.saved_model.load`, it exposes `get_metadata()` (no
    inputs; `keras_gmlp_version`, `model_class`, `model_config` JSON, full
    `metadata` JSON), the assets `metadata_file`, and where present
    `vocabulary_file` and `labels_file`.
    """

    def __init__(self, model, metadata, asset_dir):
        super().__init__(name="keras_gmlp_export")
        # Track the variables, not the Keras objects (a plain function is not tracked), as
        # ExportArchive does: the SavedModel's object graph stays plain TensorFlow.
        self.model_variables = list(model.variables)
        self.call_model = _inference_call(model)
        self._asset_dir = asset_dir
        self.metadata_file = self.write_asset(METADATA_FILENAME, [_json(metadata)])
        constants = {
            "keras_gmlp_version": metadata["keras_gmlp_version"],
            "model_class": metadata["model_class"],
            "model_config": _json(metadata["model"]),
            "metadata": _json(metadata),
        }
        self.get_metadata = tf.function(
            lambda: {key: tf.constant(value) for key, value in constants.items()},
            input_signature=[],
        )

    def write_asset(self, filename, lines):
        """Writes `lines` to a file that the SavedModel copies into its assets/ directory."""
        path = os.path.join(self._asset_dir, filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return tf.saved_model.Asset(path)

    def lookup_table(self, asset, default_value=""):
        """An id -> line table read from a text asset: the graph's strings come from the asset."""
        initializer = tf.lookup.TextFileInitializer(
            asset,
            key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        )
        return tf.lookup.StaticHashTable(initializer, default_value=default_value)


def check_lines(name, values):
    """Asset lines must be one per entry: reject entries with line breaks."""
    values = [str(value) for value in values]
    for i, value in enumerate(values):
        if "\n" in value or "\r" in value:
            raise ValueError(
                f"`{name}` entries are written one per line to a SavedModel asset and must not "
                f"contain line breaks; entry {i} is {value!r}."
            )
    return values


def label_names_for(num_classes, label_names):
    """`label_names` checked against `num_classes`; defaults to "0", "1", ..."""
    if label_names is None:
        return [str(i) for i in range(num_classes)]
    label_names = check_lines("label_names", list(label_names))
    if len(label_names) != num_classes:
        raise ValueError(
            f"`label_names` must have one name per class: the model has num_classes="
            f"{num_classes}, got {len(label_names)} names."
        )
    return label_names


def check_top_k(top_k):
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
    return top_k


def classification_outputs(logits, top_k, labels_table):
    """The outputs of every classifier signature, from float32 logits `(batch, classes)`."""
    probabilities = tf.nn.softmax(logits, axis=-1)
    top_k_scores, top_k_ids = tf.math.top_k(probabilities, k=top_k)
    predicted_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {
        "logits": logits,
        "probabilities": probabilities,
        "predicted_id": predicted_id,
        "predicted_label": labels_table.lookup(tf.cast(predicted_id, tf.int64)),
        "top_k_ids": top_k_ids,
        "top_k_scores": top_k_scores,
        "top_k_labels": labels_table.lookup(tf.cast(top_k_ids, tf.int64)),
    }


_VERSION_RE = re.compile(r"^[0-9]+$")


def _existing_versions(export_base):
    if not os.path.isdir(export_base):
        return []
    return [int(name) for name in os.listdir(export_base) if _VERSION_RE.match(name)]


def resolve_version(export_base, version):
    """`version` checked, or one more than the largest integer directory under `export_base`."""
    if version is None:
        return max(_existing_versions(export_base), default=0) + 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(
            f"`version` must be a non-negative int (TF Serving loads integer directories), "
            f"got {version!r}."
        )
    return version


def save_versioned(make_module, export_base, version):
    """Builds the module with a scratch asset directory and saves it to EXPORT_BASE/<version>/.

    `make_module(asset_dir)` returns `(module, signatures)`. The SavedModel is
    written to a hidden sibling directory and renamed into place, so a TF
    Serving instance watching `export_base` never loads a half-written version.
    """
    export_base = os.fspath(export_base)
    version = resolve_version(export_base, version)
    final_dir = os.path.join(export_base, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(
            f"Export version directory {final_dir!r} already exists; pass another `version` "
            f"or version=None for the next free one."
        )
    os.makedirs(export_base, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=export_base)
    try:
        asset_dir = os.path.join(work_dir, "asset_sources")
        os.makedirs(asset_dir)
        # Traced without the XLA-fused kernels: a SavedModel of standard ops runs wherever
        # TensorFlow does, TF Serving included (which leaves XLA on CPU off by default).
        with fusion_disabled():
            module, signatures = make_module(asset_dir)
            saved_dir = os.path.join(work_dir, "saved_model")
            tf.saved_model.save(module, saved_dir, signatures=signatures)
        os.rename(saved_dir, final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return final_dir
