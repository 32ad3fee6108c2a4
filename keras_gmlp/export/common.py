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
import socket
import time
import uuid

import keras
import tensorflow as tf
from absl import logging

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
        with tf.io.gfile.GFile(path, "w") as f:
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


# Signature inputs. TensorFlow does not enforce a signature's declared shape when it is called
# (neither `loaded.signatures[...]` nor TF Serving's Session runs), and kernels fed a shape the
# graph was not traced for can abort the whole process (a rank-2 `images` tensor reached a oneDNN
# convolution: "Check failed: index >= 0 && index < num_total_dims"). A static shape would also
# let TensorFlow fold rank and size checks away. So every input is declared with its dtype only
# (TensorFlow rejects another dtype before the graph runs), and the signature checks ranks,
# shapes and values itself, failing the request with INVALID_ARGUMENT before the model runs.


def input_spec(dtype, name):
    """A signature input of `dtype` and any shape; the signature checks the shape itself."""
    return tf.TensorSpec(None, dtype, name=name)


def require(condition, message, *values):
    """Graph check: unless `condition`, fails the request with InvalidArgumentError.

    The error reads "assertion failed: [MESSAGE]", `message`'s "{}" filled
    with `values` (tensors, printed in full).
    """
    return tf.debugging.Assert(
        condition, [tf.strings.format(message, values, summarize=-1)] if values else [message]
    )


def after(checks, *tensors):
    """`tensors` passed on only once every op in `checks` ran (and passed)."""
    with tf.control_dependencies(checks):
        outputs = [tf.identity(tensor) for tensor in tensors]
    return outputs[0] if len(outputs) == 1 else outputs


def require_shape(tensor, name, expected, description):
    """Graph check that `tensor` has `len(expected)` dimensions, each equal to the int in
    `expected` (None: any size); `description` says what was expected, e.g. "(batch, 8, 8, 3)"."""
    shape = tf.shape(tensor, out_type=tf.int64)
    rank_ok = tf.equal(tf.size(shape), len(expected))
    fixed = [(axis, size) for axis, size in enumerate(expected) if size is not None]
    if fixed:
        ok = tf.cond(
            rank_ok,
            lambda: tf.reduce_all(tf.stack([tf.equal(shape[axis], size) for axis, size in fixed])),
            lambda: tf.constant(False),
        )
    else:
        ok = rank_ok
    return require(ok, f"`{name}` of shape {{}}: expected {description}.", shape)


def require_range(tensor, name, low, high, description):
    """Graph check that every value of the int `tensor` is in [low, high) (tensors or ints)."""
    low_value, high_value = tf.reduce_min(tensor), tf.reduce_max(tensor)
    ok = tf.logical_or(
        tf.equal(tf.size(tensor), 0),
        tf.logical_and(low_value >= low, high_value < high),
    )
    return require(ok, f"`{name}` has values in [{{}}, {{}}]: expected {description}.",
                   low_value, high_value)


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
SCRATCH_PREFIX = ".tmp-export-"
_OWNER_FILENAME = "owner.json"
# A scratch directory whose owner cannot be checked (another host, or no owner record) is taken
# for a killed export's leftover after this long; exports take minutes, not hours.
STALE_SCRATCH_SECONDS = 24 * 3600
_UNOWNED_SCRATCH_SECONDS = 600


def _is_local(path):
    return "://" not in path or path.startswith("file://")


def _entries(directory):
    # Object stores list directories with a trailing slash.
    return [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]


def _existing_versions(export_base):
    if not tf.io.gfile.isdir(export_base):
        return []
    return [int(name) for name in _entries(export_base) if _VERSION_RE.match(name)]


def check_version(version):
    """`version` checked: None or a non-negative int."""
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or version < 0):
        raise ValueError(
            f"`version` must be a non-negative int (TF Serving loads integer directories), "
            f"got {version!r}."
        )
    return version


def resolve_version(export_base, version):
    """`version` checked, or one more than the largest integer directory under `export_base`."""
    if check_version(version) is None:
        return max(_existing_versions(export_base), default=0) + 1
    return version


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _scratch_is_stale(path, now):
    owner_file = os.path.join(path, _OWNER_FILENAME)
    try:
        with tf.io.gfile.GFile(owner_file, "r") as f:
            owner = json.load(f)
    except (tf.errors.OpError, ValueError):
        owner = None
    if owner and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"])
    if owner and isinstance(owner.get("time"), (int, float)):
        # Object stores have no directory mtimes: the record says when the export started.
        return now - owner["time"] > STALE_SCRATCH_SECONDS
    try:
        age = now - tf.io.gfile.stat(path).mtime_nsec / 1e9
    except tf.errors.OpError:
        return False
    return age > (STALE_SCRATCH_SECONDS if owner else _UNOWNED_SCRATCH_SECONDS)


def remove_stale_scratch(export_base):
    """Removes the scratch directories of exports that were killed; returns their paths.

    A scratch directory records its exporter's host and pid: one from this host whose process
    is gone is removed at once; one from another host (or without a record) once it is older
    than `STALE_SCRATCH_SECONDS` (ten minutes without a record).
    """
    if not tf.io.gfile.isdir(export_base):
        return []
    removed = []
    now = time.time()
    for name in _entries(export_base):
        path = os.path.join(export_base, name)
        if name.startswith(SCRATCH_PREFIX) and _scratch_is_stale(path, now):
            tf.io.gfile.rmtree(path)
            removed.append(path)
    if removed:
        logging.warning("removed %d scratch directories of killed exports: %s", len(removed),
                        removed)
    return removed


def _copy_tree(source, destination):
    """Copies a SavedModel directory file by file, `saved_model.pb` last: on file systems
    without an atomic directory rename (object stores), a version has its graph only once its
    variables and assets are in place."""
    files = []
    for directory, _, names in tf.io.gfile.walk(source):
        relative = directory[len(source):].strip("/")
        for name in names:
            files.append(os.path.join(relative, name) if relative else name)
    files.sort(key=lambda name: (name == "saved_model.pb", name))
    for name in files:
        target = os.path.join(destination, name)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(source, name), target, overwrite=False)


def _publish(saved_dir, final_dir):
    """Moves a written SavedModel to `final_dir`; False when that version appeared meanwhile."""
    if tf.io.gfile.exists(final_dir):
        return False
    if not _is_local(final_dir):
        _copy_tree(saved_dir, final_dir)
        return True
    try:
        # rename(2): atomic, and it fails rather than replace a non-empty directory.
        tf.io.gfile.rename(saved_dir, final_dir, overwrite=False)
    except tf.errors.OpError:
        if tf.io.gfile.exists(final_dir):
            return False  # another exporter took this version first
        raise
    return True


def save_versioned(make_module, export_base, version):
    """Builds the module with a scratch asset directory and saves it to EXPORT_BASE/<version>/.

    `make_module(asset_dir)` returns `(module, signatures)`. Every path goes
    through `tf.io.gfile`, so `export_base` may be any TensorFlow file system
    ("gs://...", "ram://..."). The SavedModel is written to a hidden scratch
    directory (`.tmp-export-*`, which TF Serving ignores) and then moved into
    place: renamed on local disks, so a TF Serving instance watching
    `export_base` never loads a half-written version, and on object stores
    copied with `saved_model.pb` last. With `version=None`, an exporter that
    finds its version taken by a concurrent one when it is done takes the next
    free one; an explicit `version` that exists raises FileExistsError.
    Scratch directories of killed exports are removed first.
    """
    export_base = os.fspath(export_base)
    requested = check_version(version)
    version = resolve_version(export_base, requested)
    final_dir = os.path.join(export_base, str(version))
    if tf.io.gfile.exists(final_dir):
        raise FileExistsError(
            f"Export version directory {final_dir!r} already exists; pass another `version` "
            f"or version=None for the next free one."
        )
    tf.io.gfile.makedirs(export_base)
    remove_stale_scratch(export_base)
    work_dir = os.path.join(export_base, f"{SCRATCH_PREFIX}{version}-{uuid.uuid4().hex[:12]}")
    tf.io.gfile.makedirs(work_dir)
    try:
        with tf.io.gfile.GFile(os.path.join(work_dir, _OWNER_FILENAME), "w") as f:
            f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "time": time.time()}))
        asset_dir = os.path.join(work_dir, "asset_sources")
        tf.io.gfile.makedirs(asset_dir)
        # Traced without the XLA-fused kernels: a SavedModel of standard ops runs wherever
        # TensorFlow does, TF Serving included (which leaves XLA on CPU off by default).
        with fusion_disabled():
            module, signatures = make_module(asset_dir)
            saved_dir = os.path.join(work_dir, "saved_model")
            tf.saved_model.save(module, saved_dir, signatures=signatures)
        while not _publish(saved_dir, final_dir):
            if requested is not None:
                raise FileExistsError(
                    f"Export version directory {final_dir!r} was written by another exporter "
                    f"while this one ran; pass another `version` or version=None."
                )
            version = max(resolve_version(export_base, None), version + 1)
            final_dir = os.path.join(export_base, str(version))
    finally:
        if tf.io.gfile.exists(work_dir):
            tf.io.gfile.rmtree(work_dir)
    return final_dir
