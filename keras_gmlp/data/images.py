"""Image classification pipelines: digits default, TFDS, image folders, TFRecords; augmentation.

Sources (`source` argument):
- None: scikit-learn's `load_digits` (1797 8x8 grayscale images, 10 classes, values 0..16
  rescaled to 0..255). Splits: a stratified 80/20 `train_test_split(random_state=0)` gives
  "train" (1437 images) and "validation" (360; "test" is the same split).
- "tfds:NAME[/CONFIG]": a TFDS dataset prepared in `data_dir` (read offline), its first Image and
  ClassLabel features.
- a directory ROOT laid out as ROOT/SPLIT/LABEL/*.jpg|jpeg|png|gif|bmp; labels are the sorted
  LABEL directory names.
- "tfrecord:GLOB": `tf.train.Example` with bytes "image/encoded" and int64 "image/class/label"
  (minus `label_offset`, e.g. 1 for TF-slim ImageNet files where 0 is background). A "{split}"
  in the glob is replaced by the split ("tfrecord:/data/fmnist-{split}-*.tfrecord"); without
  one the glob holds the training data and any other split raises (never evaluate on it).
- "idx:DIR": IDX files DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (MNIST format;
  "test"/"validation" = t10k). "fashion_mnist" = "idx:/usr/share/datasets/fashion-mnist"
  (Debian's `dataset-fashion-mnist`, installed offline; see `keras_gmlp.data.idx`).

Order: sources that fit in memory as a list (digits, IDX arrays, folder file lists, TFRecords
up to `IN_MEMORY_TFRECORD_BYTES`) are shuffled whole, seeded, anew each epoch, so a list sorted
by class trains like a shuffled one; larger TFRecord globs and TFDS datasets shuffle their file
order each epoch and then mix records in a `shuffle_buffer_size` buffer.

Channels: grayscale sources (digits, IDX, gray image files) give 1 channel, colour ones 3,
unless `channels` asks otherwise. Evaluation images are prepared by
`keras_gmlp.data.image_preprocessing` (also used by the SavedModel export), with defaults that
suit the resolution (no centre crop below 128 pixels).

Output: (images float32 (batch, H, W, C) with pixel values in [0, 255], labels): int32 class
ids, or float32 (batch, num_classes) one-hot/soft labels when MixUp, CutMix or label smoothing
is on. Unreadable images, corrupt records and empty files are skipped, counted and logged.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras_gmlp.data import _common
from keras_gmlp.data import _tfds
from keras_gmlp.data import idx
from keras_gmlp.data import image_preprocessing

AUTOTUNE = tf.data.AUTOTUNE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DIGITS_NAME = "scikit-learn load_digits"
_DIGITS_SPLITS = {"train": "train", "validation": "validation", "test": "validation"}
# TFRecord globs up to this size are read into memory and shuffled whole each epoch.
IN_MEMORY_TFRECORD_BYTES = 256 << 20
SPLIT_PLACEHOLDER = "{split}"
_CHANNEL_PROBES = 8  # files / records decoded to tell grayscale from colour sources


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a trainer needs to build a model for an image source."""

    num_classes: int
    label_names: tuple
    image_shape: tuple  # native (height, width, channels); None where it varies per image
    num_examples: int = None  # of the requested split, when known


# ---------------------------------------------------------------------------------------------
# Sources: each returns (examples dataset, decode fn or None, DatasetInfo). Examples are cheap
# (a path, a record, a small array) so shuffling happens before the expensive decode.


def _digits(split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _common.check(split in _DIGITS_SPLITS, "split", split, f"one of {sorted(_DIGITS_SPLITS)} for the digits default")
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, validation = train_test_split(indices, test_size=0.2, random_state=0, stratify=digits.target)
    chosen = np.sort(train if _DIGITS_SPLITS[split] == "train" else validation)
    images = (digits.images[chosen] * (255.0 / 16.0)).astype(np.float32)[..., None]
    labels = digits.target[chosen].astype(np.int32)
    info = DatasetInfo(10, tuple(str(i) for i in range(10)), (8, 8, 1), len(chosen))
    return images, labels, info


def source_kind(source):
    """("default" | "tfds" | "tfrecord" | "idx" | "files", rest) for an image source string."""
    if source == "fashion_mnist":
        return "idx", idx.FASHION_MNIST_DIR
    if isinstance(source, str) and source.startswith("idx:"):
        _common.check(source[4:], "source", source, '"idx:" followed by a directory')
        return "idx", source[4:]
    return _common.split_source(source)


def tfrecord_pattern(pattern, split, source):
    """The glob of `split`: "{split}" replaced; without it, only the "train" split exists."""
    if SPLIT_PLACEHOLDER in pattern:
        return pattern.replace(SPLIT_PLACEHOLDER, split)
    if split != "train":
        raise ValueError(
            f"`source`={source!r}, `split`={split!r}: this TFRecord glob has no {SPLIT_PLACEHOLDER} "
            f"placeholder, so it holds the training data only and reading it as {split!r} would "
            "evaluate on training examples. Put {split} in the glob (e.g. "
            "'tfrecord:/data/fmnist-{split}-*.tfrecord') or pass the held-out files as their own source.")
    return pattern


def data_identity(source, split="train", data_dir=None):
    """A frozenset naming the stored examples `source`'s `split` reads (files, dataset splits).

    Two (source, split) pairs whose identities intersect read some of the same examples; trainers
    use this to refuse evaluating on training data.
    """
    kind, rest = source_kind(source)
    if kind == "default":
        _common.check(split in _DIGITS_SPLITS, "split", split, f"one of {sorted(_DIGITS_SPLITS)} for the digits default")
        return frozenset({f"digits:{_DIGITS_SPLITS[split]}"})
    if kind == "tfds":
        return frozenset({f"tfds:{os.path.realpath(data_dir or '~')}:{rest}:{split}"})
    if kind == "idx":
        _common.check(split in idx.SPLIT_PREFIXES, "split", split, f"one of {sorted(idx.SPLIT_PREFIXES)} for {source!r}")
        return frozenset({f"idx:{os.path.realpath(rest)}:{idx.SPLIT_PREFIXES[split]}"})
    if kind == "files":
        return frozenset({"files:" + os.path.realpath(os.path.join(rest, split))})
    files = _common.glob_files(tfrecord_pattern(rest, split, source), source)
    return frozenset("tfrecord:" + os.path.realpath(f) for f in files)


def _idx(directory, split, source):
    images, labels = idx.load_split(directory, split, source)
    names = idx.FASHION_MNIST_LABELS if os.path.realpath(directory) == os.path.realpath(
        idx.FASHION_MNIST_DIR) else tuple(str(i) for i in range(int(labels.max()) + 1))
    info = DatasetInfo(len(names), tuple(names), tuple(images.shape[1:]), len(labels))
    return images, labels, info


def _native_channels(encoded_images):
    """1 when every probed image is gray (with or without alpha), else 3."""
    for encoded in encoded_images:
        try:
            have = int(tf.io.decode_image(encoded, channels=0, expand_animations=False).shape[-1])
        except (tf.errors.InvalidArgumentError, ValueError):
            continue  # unreadable: skipped (and counted) by the pipeline
        if have >= 3:
            return 3
    return 1


def _probe_files(paths):
    step = max(len(paths) // _CHANNEL_PROBES, 1)
    return [tf.io.read_file(p) for p in paths[::step][:_CHANNEL_PROBES]]


def _probe_records(records):
    probes = []
    for record in records.take(_CHANNEL_PROBES):
        try:
            probes.append(tf.io.parse_single_example(record, _TFRECORD_SPEC)["image/encoded"])
        except tf.errors.InvalidArgumentError:
            continue
    return probes


def _folder_files(root, split, source):
    split_dir = os.path.join(root, split)
    if not tf.io.gfile.isdir(split_dir):
        raise ValueError(f"`source`={source!r}, `split`={split!r}: expected a directory {split_dir!r} "
                         "laid out as ROOT/SPLIT/LABEL/*.jpg|png.")
    label_names = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(split_dir)
                         if tf.io.gfile.isdir(os.path.join(split_dir, d)))
    if not label_names:
        raise ValueError(f"`source`={source!r}: {split_dir!r} has no label directories.")
    paths, labels = [], []
    for label, name in enumerate(label_names):
        for entry in sorted(tf.io.gfile.listdir(os.path.join(split_dir, name))):
            if entry.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(split_dir, name, entry))
                labels.append(label)
    if not paths:
        raise ValueError(f"`source`={source!r}: no {IMAGE_EXTENSIONS} files under {split_dir!r}.")
    return paths, labels, tuple(label_names)


_TFRECORD_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _scan_tfrecord_labels(files, source, label_offset):
    counter = _common.skip_counter(source)
    records = _common.tfrecords(files, counter)
    if records is None:
        raise ValueError(f"`source`={source!r}: every matching TFRecord file is empty.")
    labels = _common.try_map(
        records,
        lambda r: tf.io.parse_single_example(r, _TFRECORD_SPEC)["image/class/label"],
        tf.constant(0, tf.int64),
        counter,
        "unparsable tf.train.Example",
        lambda r: tf.strings.join([source, ": record of ", tf.strings.as_string(tf.strings.length(r)), " bytes"]),
    )
    values = np.fromiter(labels.as_numpy_iterator(), np.int64) - label_offset
    return values


def dataset_info(source=None, split="train", data_dir=None, *, num_classes=None, label_offset=0):
    """`DatasetInfo` (num_classes, label_names, native image_shape, num_examples) for `source`.

    For "tfrecord:" sources without `num_classes` the labels are read once (max label + 1).
    """
    kind, rest = source_kind(source)
    if kind == "default":
        return _digits(split)[2]
    if kind == "idx":
        return _idx(rest, split, source)[2]
    if kind == "tfds":
        builder, _ = _tfds.load(rest, split, data_dir, source)
        image_key = _tfds.feature_key(builder, "image", None, source, "source")
        label_key = _tfds.feature_key(builder, "label", None, source, "source")
        label = builder.info.features[label_key]
        try:
            examples = builder.info.splits[split].num_examples
        except Exception:  # mocked or partially prepared datasets may lack split metadata
            examples = None
        return DatasetInfo(label.num_classes, tuple(label.names), tuple(builder.info.features[image_key].shape),
                           examples)
    if kind == "files":
        paths, _, names = _folder_files(rest, split, source)
        return DatasetInfo(len(names), names, (None, None, _native_channels(_probe_files(paths))), len(paths))
    files = _common.glob_files(tfrecord_pattern(rest, split, source), source)
    records = _in_memory_records(files, _common.skip_counter(source))
    if records is not None:
        records = tf.data.Dataset.from_tensor_slices(records[:_CHANNEL_PROBES])
    else:
        records = _common.tfrecords(files, _common.skip_counter(source))
    channels = _native_channels(_probe_records(records)) if records is not None else 3
    if num_classes is None:
        labels = _tfrecord_labels(files, source, label_offset)
        if labels.size == 0:
            raise ValueError(f"`source`={source!r} yields no examples.")
        return DatasetInfo(int(labels.max()) + 1, tuple(str(i) for i in range(int(labels.max()) + 1)),
                           (None, None, channels), int(labels.size))
    return DatasetInfo(num_classes, tuple(str(i) for i in range(num_classes)), (None, None, channels), None)


def _decode(encoded, channels):
    return image_preprocessing.decode_image(encoded, channels)


_IN_MEMORY_CACHE = {}  # (files, sizes, mtimes) -> records; the last few globs read


def _in_memory_records(files, counter):
    """All records of `files` as one string tensor when they total at most
    `IN_MEMORY_TFRECORD_BYTES` on disk, else None. Empty and corrupt files are reported to
    `counter` as `_common.tfrecords` does (records before a corruption are kept)."""
    stats = [tf.io.gfile.stat(f) for f in files]
    if sum(st.length for st in stats) > IN_MEMORY_TFRECORD_BYTES:
        return None
    key = tuple((f, st.length, st.mtime_nsec) for f, st in zip(files, stats))
    if key not in _IN_MEMORY_CACHE:
        values = []
        for path, st in zip(files, stats):
            if st.length == 0:
                counter.add("empty file", path)
                continue
            read = [r for batch in tf.data.TFRecordDataset(path).ignore_errors().batch(8192)
                    .as_numpy_iterator() for r in batch]
            if sum(len(r) + _common.TFRECORD_OVERHEAD for r in read) != st.length:
                counter.add("corrupt TFRecord data (rest of file unreadable)", path)
            values.extend(read)
        while len(_IN_MEMORY_CACHE) >= 4:
            _IN_MEMORY_CACHE.pop(next(iter(_IN_MEMORY_CACHE)))
        _IN_MEMORY_CACHE[key] = tf.constant(values, tf.string) if values else None
    return _IN_MEMORY_CACHE[key]


def _tfrecord_labels(files, source, label_offset):
    records = _in_memory_records(files, _common.skip_counter(source))
    if records is not None:
        try:
            return tf.io.parse_example(records, _TFRECORD_SPEC)["image/class/label"].numpy() - label_offset
        except tf.errors.InvalidArgumentError:
            pass  # an unparsable record: the record-by-record scan skips and counts it
    return _scan_tfrecord_labels(files, source, label_offset)


def _source(source, split, data_dir, channels, label_offset, shuffle_seed, num_classes):
    """(examples, decoder or None, info, channels).

    `examples` is ("indexed", (tensors...), n): n examples held in memory, each the slices of the
    tensors at one index (shuffled whole by the caller); or ("stream", dataset) for sources too
    large to hold, whose file order is shuffled here with `shuffle_seed` (None = in order).
    `decoder` is (decode(*example) -> (image float32, label), reason, describe(*example)).
    """
    kind, rest = source_kind(source)
    if kind in ("default", "idx"):
        if kind == "default":
            images, labels, info = _digits(split)
            logging.info("using default image dataset %s, split %r (%d images of 8x8x1, 10 classes)",
                         DIGITS_NAME, split, len(labels))
        else:
            images, labels, info = _idx(rest, split, source)
            logging.info("reading IDX images %s, split %r: %d images of %s", rest, split, len(labels),
                         info.image_shape)
        channels = channels or info.image_shape[-1]
        return ("indexed", (tf.constant(images), tf.constant(labels)), len(labels)), None, info, channels
    if kind == "tfds":
        builder, raw = _tfds.load(rest, split, data_dir, source, shuffle_seed=shuffle_seed)
        info = dataset_info(source, split, data_dir)
        image_key = _tfds.feature_key(builder, "image", None, source, "source")
        label_key = _tfds.feature_key(builder, "label", None, source, "source")
        channels = channels or info.image_shape[-1] or 3
        examples = raw.map(lambda e: (tf.cast(e[image_key], tf.float32), tf.cast(e[label_key], tf.int32)),
                           num_parallel_calls=AUTOTUNE, deterministic=True)
        return ("stream", examples), None, info, channels
    counter = _common.skip_counter(source)
    if kind == "files":
        paths, labels, names = _folder_files(rest, split, source)
        info = dataset_info(source, split, data_dir)
        channels = channels or info.image_shape[-1]

        def decode(path, label):
            return _decode(tf.io.read_file(path), channels), label

        examples = ("indexed", (tf.constant(paths), tf.constant(labels, tf.int32)), len(paths))
        return examples, (decode, "unreadable image", lambda path, label: path), info, channels
    files = _common.glob_files(tfrecord_pattern(rest, split, source), source)
    info = dataset_info(source, split, data_dir, num_classes=num_classes, label_offset=label_offset)
    channels = channels or info.image_shape[-1]
    in_memory = _in_memory_records(files, counter)
    if in_memory is not None:
        examples = ("indexed", (in_memory,), int(in_memory.shape[0]))
    else:
        records = _common.tfrecords(files, counter, num_parallel_reads=16 if shuffle_seed is not None else 4,
                                    shuffle_seed=shuffle_seed)
        if records is None:
            raise ValueError(f"`source`={source!r}: every matching TFRecord file is empty.")
        examples = ("stream", records)

    def decode_record(record):
        features = tf.io.parse_single_example(record, _TFRECORD_SPEC)
        label = tf.cast(features["image/class/label"] - label_offset, tf.int32)
        tf.debugging.assert_non_negative(label, "negative label")
        return _decode(features["image/encoded"], channels), label

    describe = lambda r: tf.strings.join(  # noqa: E731
        [source, ": record of ", tf.strings.as_string(tf.strings.length(r)), " bytes"])
    return examples, (decode_record, "undecodable tf.train.Example image", describe), info, channels


# ---------------------------------------------------------------------------------------------
# Per-image preprocessing (stateless: randomness depends on (seed, element index) only).


def _resize(image, size):
    return image_preprocessing.resize(image, size)


def _random_resized_crop(image, size, scale, ratio, seed):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return _resize(tf.slice(image, begin, crop_size), size)


def image_dataset(
    source=None,
    split="train",
    image_size=None,
    batch_size=32,
    training=True,
    seed=0,
    data_dir=None,
    num_classes=None,
    *,
    channels=None,
    random_resized_crop=None,
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    horizontal_flip=None,
    rand_augment=False,
    rand_augment_num_ops=2,
    rand_augment_factor=0.5,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    label_smoothing=0.0,
    center_crop_fraction=None,
    preprocessing=None,
    label_offset=0,
    shuffle=None,
    repeat=None,
    drop_remainder=None,
    shuffle_buffer_size=10_000,
    input_context=None,
    num_parallel_calls=AUTOTUNE,
    skip_batches=0,
):
    """Batches `(images float32 (b, H, W, C) in [0, 255], labels)`.

    Args:
        source: see the module docstring (None = digits, logged).
        split: "train", "validation", ... (TFDS split string for TFDS sources).
        image_size: (H, W) or int; None = the source's native size (digits: 8x8; required
            for folders and TFRecords, whose images vary in size).
        batch_size: examples per batch from this pipeline (per replica under
            `distribute_datasets_from_function`).
        training: augment (random-resized-crop, flip, RandAugment, MixUp/CutMix) or evaluate
            (`image_preprocessing.preprocess_image` with `preprocessing`; no randomness).
        seed: int; crop/flip randomness is a stateless function of (seed, element index), so
            it resumes exactly from an iterator checkpoint. RandAugment/MixUp/CutMix are Keras
            layers seeded with `seed` (reproducible from the start of a run).
        num_classes: needed for one-hot labels from TFRecords (default: read from the data).
        channels: output channels (default: the source's: 1 for grayscale sources, else 3;
            converts gray <-> RGB).
        random_resized_crop, horizontal_flip: None = on, except for the digits default (8x8
            digits are neither mirror-symmetric nor croppable without losing strokes).
        crop_scale, crop_ratio: area fraction and aspect-ratio ranges of the crop.
        rand_augment: apply `keras.layers.RandAugment(value_range=(0, 255), num_ops, factor)`.
        mixup_alpha, cutmix_alpha: > 0 turns on `keras.layers.MixUp(alpha)` /
            `keras.layers.CutMix(factor)`; with both, each batch uses one of them (p = 0.5).
        label_smoothing: epsilon of uniform label smoothing (training only).
        center_crop_fraction: evaluation crop (default: `image_preprocessing`'s for the
            resolution, 1.0 below 128 pixels); overrides `preprocessing`'s.
        preprocessing: an `image_preprocessing` config for evaluation (e.g. the one a model was
            exported with); default `preprocessing_config((*image_size, channels))`. Its
            image_size and channels then set the output's.
        label_offset: subtracted from TFRecord labels.
        shuffle, repeat, drop_remainder: default to `training`. Shuffling permutes the whole
            source each epoch where it fits in memory (see the module docstring), else uses a
            `shuffle_buffer_size` buffer after shuffling the file order.
        input_context: `tf.distribute.InputContext`; element-level sharding after shuffling.
        skip_batches: start after this many batches of this pipeline (resuming where the
            iterator cannot be checkpointed). Crops and flips then match an uninterrupted run
            exactly; RandAugment/MixUp/CutMix draws restart from the seed.
    """
    _common.check_positive_int("batch_size", batch_size)
    _common.check_seed(seed)
    _common.check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    _common.check(isinstance(skip_batches, int) and skip_batches >= 0, "skip_batches", skip_batches, "an int >= 0")
    _common.check(channels in (None, 1, 3), "channels", channels, "None, 1 or 3")
    _common.check(isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1, "label_smoothing",
                  label_smoothing, "a float in [0, 1)")
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        _common.check(isinstance(value, (int, float)) and value >= 0, name, value, "a float >= 0 (0 = off)")
    for name, pair, low in (("crop_scale", crop_scale, 0), ("crop_ratio", crop_ratio, 0)):
        _common.check(len(pair) == 2 and low < pair[0] <= pair[1], name, pair, "(low, high) with 0 < low <= high")
    _common.check(crop_scale[1] <= 1, "crop_scale", crop_scale, "an area range within (0, 1]")
    if preprocessing is not None:
        preprocessing = image_preprocessing.check_config(preprocessing)
        wanted_size = tuple(preprocessing["image_size"])
        given_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        _common.check(given_size is None or tuple(given_size) == wanted_size, "image_size", image_size,
                      f"None or {wanted_size}, as `preprocessing` says")
        _common.check(channels in (None, preprocessing["channels"]), "channels", channels,
                      f"None or {preprocessing['channels']}, as `preprocessing` says")
        image_size, channels = tuple(preprocessing["image_size"]), preprocessing["channels"]
    if image_size is not None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        image_size = tuple(image_size)
        _common.check(len(image_size) == 2 and all(isinstance(s, int) and s > 0 for s in image_size),
                      "image_size", image_size, "an int or (height, width) of positive ints")
    if num_classes is not None:
        _common.check_positive_int("num_classes", num_classes)
    shuffle = training if shuffle is None else shuffle
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder

    kind, _ = source_kind(source)
    is_digits = kind == "default"
    examples, decoder, info, channels = _source(source, split, data_dir, channels, label_offset,
                                                seed if shuffle else None, num_classes)
    num_classes = num_classes or info.num_classes
    if image_size is None:
        native = info.image_shape[:2]
        if None in native:
            raise ValueError(f"`image_size`=None: images of {source!r} vary in size; pass image_size.")
        image_size = tuple(int(s) for s in native)
    if random_resized_crop is None:
        random_resized_crop = not is_digits
    if horizontal_flip is None:
        horizontal_flip = not is_digits
    if center_crop_fraction is not None:
        _common.check(isinstance(center_crop_fraction, (int, float)) and 0 < center_crop_fraction <= 1,
                      "center_crop_fraction", center_crop_fraction, "a float in (0, 1]")
    if preprocessing is None:
        preprocessing = image_preprocessing.preprocessing_config((*image_size, channels),
                                                                 crop_fraction=center_crop_fraction)
    elif center_crop_fraction is not None:
        preprocessing = dict(preprocessing, crop_fraction=float(center_crop_fraction))
    mixing = training and (mixup_alpha > 0 or cutmix_alpha > 0)
    smoothing = label_smoothing if training else 0.0
    one_hot = mixing or smoothing > 0

    if examples[0] == "indexed":
        _, tensors, size = examples
        _common.check(size > 0, "source", source, f"a source with examples in split {split!r}")
        # Only indices pass through the shuffle: a full permutation per epoch costs 8 bytes an
        # example in the buffer (and in an iterator checkpoint), whatever the payload.
        order = tf.data.Dataset.range(size)
        if shuffle:
            order = order.shuffle(size, seed=seed, reshuffle_each_iteration=True)

        def gather(i):  # TFRecords hold one string per example, like a record stream
            if len(tensors) == 1:
                return tf.gather(tensors[0], i)
            return tuple(tf.gather(t, i) for t in tensors)

        finite = tf.data.Dataset.range(size).map(gather)
        examples = order.map(gather)
    else:
        finite = examples = examples[1]
        if shuffle:
            examples = examples.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if decoder is not None:
        # Probe the finite stream (a repeated one of only unreadable images would never end).
        decode, reason, describe = decoder
        probe = _common.try_map(finite, lambda *e: decode(*e), (tf.zeros([1, 1, channels]), tf.constant(0)),
                                _common.skip_counter(source), reason, lambda *e: describe(*e))
        _common.require_elements(probe, 1, source, "readable images")
    if repeat:
        examples = examples.repeat()
    examples = _common.shard(examples.enumerate(), input_context)
    if decoder is not None:
        counter = _common.skip_counter(source)
        examples = _common.try_map(
            examples,
            lambda index, element: (index, _spread(decode, element)),
            (tf.constant(0, tf.int64), (tf.zeros([1, 1, channels]), tf.constant(0, tf.int32))),
            counter,
            reason,
            lambda index, element: _spread(describe, element),
            num_parallel_calls=num_parallel_calls,
        )

    if skip_batches:
        examples = examples.skip(skip_batches * batch_size)  # after decoding: skipped bad items don't shift it

    def _preprocess(index, element):
        image, label = element
        if training:
            image = image_preprocessing.match_channels(tf.cast(image, tf.float32), channels)
            crop_seed, flip_seed = tf.unstack(
                tf.random.experimental.stateless_split(_common.element_seed(seed, index), 2))
            if random_resized_crop:
                image = _random_resized_crop(image, image_size, crop_scale, crop_ratio, crop_seed)
            else:
                image = _resize(image, image_size)
            if horizontal_flip:
                image = tf.image.stateless_random_flip_left_right(image, flip_seed)
            image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (*image_size, channels))
        else:
            image = image_preprocessing.preprocess_image(image, preprocessing)
        if one_hot:
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
            if smoothing > 0:
                label = label * (1.0 - smoothing) + smoothing / num_classes
        return image, label

    dataset = examples.map(_preprocess, num_parallel_calls=num_parallel_calls, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and rand_augment:
        augment = keras.layers.RandAugment(value_range=(0, 255), num_ops=rand_augment_num_ops,
                                           factor=rand_augment_factor, seed=seed)
        dataset = dataset.map(lambda images, labels: (augment(images, training=True), labels))
    if mixing:
        dataset = dataset.enumerate().map(_mixer(mixup_alpha, cutmix_alpha, seed))
    return dataset.prefetch(AUTOTUNE).with_options(_common.deterministic_options())


def _spread(fn, element):
    return fn(*element) if isinstance(element, tuple) else fn(element)


def _mixer(mixup_alpha, cutmix_alpha, seed):
    mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=seed) if mixup_alpha > 0 else None
    cutmix = keras.layers.CutMix(factor=cutmix_alpha, seed=seed + 1) if cutmix_alpha > 0 else None

    def _apply(layer, images, labels):
        out = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

    def mix(batch_index, batch):
        images, labels = batch
        if mixup is None:
            return _apply(cutmix, images, labels)
        if cutmix is None:
            return _apply(mixup, images, labels)
        coin = tf.random.stateless_uniform([], _common.element_seed(seed + 2, batch_index))
        return tf.cond(coin < 0.5, lambda: _apply(mixup, images, labels), lambda: _apply(cutmix, images, labels))

    return mix
