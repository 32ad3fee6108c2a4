"""Pieces shared by the text and image pipelines: sources, sharding, seeds, skipping bad data."""

import threading

import tensorflow as tf
from absl import logging

from keras_gmlp import validation
from keras_gmlp.validation import check  # noqa: F401 (used by the pipelines as _common.check)
from keras_gmlp.validation import check_positive_int  # noqa: F401

AUTOTUNE = tf.data.AUTOTUNE

# Bytes a TFRecord adds around each record: length (8), length CRC (4), data CRC (4).
TFRECORD_OVERHEAD = 16


def check_seed(seed):
    validation.check_seed("seed", seed)


def split_source(source):
    """("default" | "tfrecord" | "tfds" | "files", rest) for a source string or None."""
    if source is None:
        return "default", None
    check(isinstance(source, str) and source.strip(), "source", source, "None or a non-empty string")
    for kind in ("tfrecord", "tfds"):
        if source.startswith(kind + ":"):
            rest = source[len(kind) + 1 :]
            check(rest, "source", source, f'"{kind}:" followed by a glob or name')
            return kind, rest
    return "files", source


def glob_files(pattern, source):
    """Sorted files matching `pattern`; ValueError naming `source` when none match."""
    files = sorted(tf.io.gfile.glob(pattern))
    files = [f for f in files if not tf.io.gfile.isdir(f)]
    if not files:
        raise ValueError(f"`source`={source!r}: the glob {pattern!r} matched no files.")
    return files


# ---------------------------------------------------------------------------------------------
# Skipped-data accounting. Corrupt or unreadable items are dropped inside the tf.data graph; the
# graph reports each one through a py_function (rare path only) to a per-source counter here.
# Counting distinct items keeps the number meaningful across epochs and the emptiness probe.


class SkipCounter:
    """Distinct items skipped from one source (corrupt records, unreadable images, empty files)."""

    def __init__(self, source):
        self.source = source
        self._items = set()
        self._lock = threading.Lock()

    @property
    def count(self):
        with self._lock:
            return len(self._items)

    @property
    def items(self):
        with self._lock:
            return sorted(self._items)

    def add(self, reason, item):
        key = f"{item} ({reason})"
        with self._lock:
            if key in self._items:
                return
            self._items.add(key)
            count = len(self._items)
        logging.warning("skipped %s: %s; %d item(s) skipped so far from source %r", reason, item, count, self.source)


_COUNTERS = {}
_COUNTERS_LOCK = threading.Lock()


def skip_counter(source):
    """The `SkipCounter` for a source string (created on first use)."""
    key = str(source)
    with _COUNTERS_LOCK:
        if key not in _COUNTERS:
            _COUNTERS[key] = SkipCounter(key)
        return _COUNTERS[key]


def skipped_counts():
    """{source: number of distinct items skipped so far} for every source read in this process."""
    with _COUNTERS_LOCK:
        return {key: counter.count for key, counter in _COUNTERS.items()}


def report_skip_if(bad, counter, reason, item):
    """Graph op: when `bad`, report `item` (a string tensor) to `counter`. Returns `not bad`."""

    def _report(item_tensor):
        counter.add(reason, item_tensor.numpy().decode("utf-8", errors="replace"))
        return tf.constant(False)

    def _on_bad():
        return tf.reshape(tf.py_function(_report, [item], Tout=tf.bool), [])

    return tf.cond(bad, _on_bad, lambda: tf.constant(True))


def try_map(dataset, fn, fallback, counter, reason, describe, num_parallel_calls=AUTOTUNE):
    """`dataset.map(fn)` that drops (and reports) elements on which `fn` raises.

    TF graphs have no try/except: each element runs in its own one-element dataset whose
    errors are ignored, followed by `fallback` (same structure as `fn`'s output); `take(1)`
    then yields `fn`'s result, or the fallback when `fn` failed. `describe(element)` gives the
    string reported for a dropped element.
    """

    def _one(*element):
        good = tf.data.Dataset.from_tensors(element).map(lambda *e: (fn(*e), True)).ignore_errors()
        bad = tf.data.Dataset.from_tensors((fallback, False))
        flagged = good.concatenate(bad).take(1)
        return flagged.map(lambda out, ok: (out, ok, describe(*element)))

    flagged = dataset.interleave(
        _one, cycle_length=8, block_length=1, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    flagged = flagged.filter(lambda out, ok, what: report_skip_if(tf.logical_not(ok), counter, reason, what))
    return flagged.map(lambda out, ok, what: out)


def tfrecords(files, counter, num_parallel_reads=4, shuffle_seed=None):
    """Records of `files` in order, skipping (and reporting) empty and corrupt files.

    A corrupt or truncated record ends the readable part of its file; the bytes read are
    compared with the file's size to detect that, since `ignore_errors` itself is silent.
    With `shuffle_seed`, the file order is shuffled (seeded, anew on each iteration).
    """
    sized = []
    for path in files:
        size = tf.io.gfile.stat(path).length
        if size == 0:
            counter.add("empty file", path)
        else:
            sized.append((path, size))
    if not sized:
        return None
    paths = tf.constant([p for p, _ in sized])
    sizes = tf.constant([s for _, s in sized], tf.int64)

    def _read(path, size):
        records = tf.data.TFRecordDataset(path).ignore_errors()
        marked = records.map(lambda r: (r, False)).concatenate(tf.data.Dataset.from_tensors((tf.constant(b""), True)))

        def _accumulate(consumed, element):
            record, is_end = element
            length = tf.cast(tf.strings.length(record), tf.int64) + TFRECORD_OVERHEAD
            consumed = consumed + tf.where(is_end, tf.constant(0, tf.int64), length)
            return consumed, (record, is_end, consumed)

        scanned = marked.scan(tf.constant(0, tf.int64), _accumulate)

        def _keep(record, is_end, consumed):
            corrupt = tf.logical_and(is_end, tf.not_equal(consumed, size))
            ok = report_skip_if(corrupt, counter, "corrupt TFRecord data (rest of file unreadable)", path)
            return tf.logical_and(ok, tf.logical_not(is_end))

        return scanned.filter(_keep).map(lambda record, is_end, consumed: record)

    files = tf.data.Dataset.from_tensor_slices((paths, sizes))
    if shuffle_seed is not None:
        files = files.shuffle(len(sized), seed=shuffle_seed, reshuffle_each_iteration=True)
    return files.interleave(
        _read,
        cycle_length=min(num_parallel_reads, len(sized)),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def require_elements(dataset, count, source, what="examples"):
    """Eagerly pull `count` elements; ValueError naming `source` when it has fewer."""
    got = 0
    for _ in dataset.take(count):
        got += 1
    if got < count:
        if got == 0:
            raise ValueError(f"`source`={source!r} yields no {what}.")
        raise ValueError(f"`source`={source!r} yields only {got} {what}; at least {count} are needed.")


def shard(dataset, input_context):
    """Element-level shard for `tf.distribute` input pipelines (disjoint, covering)."""
    if input_context is None or input_context.num_input_pipelines <= 1:
        return dataset
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def element_seed(seed, index):
    """A stateless-RNG seed (shape [2]) that depends only on (`seed`, element `index`)."""
    base = tf.constant([seed, 0x5EED], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def deterministic_options():
    options = tf.data.Options()
    options.deterministic = True
    # Lookup tables (tokenizer) and the skip-report py_function are the only external state;
    # neither affects the sequence of elements, so an iterator checkpoint need not hold them.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    # Under `experimental_distribute_dataset` each worker reads every file and keeps its share of
    # the batches: FILE auto-sharding would hand a single input file to one worker only.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
