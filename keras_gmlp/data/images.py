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
  (minus `label_offset`, e.g. 1 for TF-slim ImageNet files where 0 is background).

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

AUTOTUNE = tf.data.AUTOTUNE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DIGITS_NAME = "scikit-learn load_digits"
_DIGITS_SPLITS = {"train": "train", "validation": "validation", "test": "validation"}


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


def _scan_tfrecord_labels(pattern, source, label_offset):
    counter = _common.skip_counter(source)
    records = _common.tfrecords(_common.glob_files(pattern, source), counter)
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
    kind, rest = _common.split_source(source)
    if kind == "default":
        return _digits(split)[2]
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
        return DatasetInfo(len(names), names, (None, None, 3), len(paths))
    if num_classes is None:
        labels = _scan_tfrecord_labels(rest, source, label_offset)
        if labels.size == 0:
            raise ValueError(f"`source`={source!r} yields no examples.")
        return DatasetInfo(int(labels.max()) + 1, tuple(str(i) for i in range(int(labels.max()) + 1)),
                           (None, None, 3), int(labels.size))
    return DatasetInfo(num_classes, tuple(str(i) for i in range(num_classes)), (None, None, 3), None)


def _decode(encoded, channels):
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    tf.debugging.assert_positive(tf.size(image), "empty image")
    return tf.cast(image, tf.float32)


def _source(source, split, data_dir, channels, label_offset):
    """(examples of (payload, label), decode(payload) -> float32 (h, w, c), info, channels)."""
    kind, rest = _common.split_source(source)
    if kind == "default":
        images, labels, info = _digits(split)
        logging.info("using default image dataset %s, split %r (%d images of 8x8x1, 10 classes)",
                     DIGITS_NAME, split, len(labels))
        channels = channels or 1
        return tf.data.Dataset.from_tensor_slices((images, labels)), None, info, channels
    if kind == "tfds":
        builder, raw = _tfds.load(rest, split, data_dir, source)
        info = dataset_info(source, split, data_dir)
        image_key = _tfds.feature_key(builder, "image", None, source, "source")
        label_key = _tfds.feature_key(builder, "label", None, source, "source")
        channels = channels or info.image_shape[-1] or 3
        examples = raw.map(lambda e: (tf.cast(e[image_key], tf.float32), tf.cast(e[label_key], tf.int32)),
                           num_parallel_calls=AUTOTUNE, deterministic=True)
        return examples, None, info, channels
    channels = channels or 3
    counter = _common.skip_counter(source)
    if kind == "files":
        paths, labels, names = _folder_files(rest, split, source)
        info = DatasetInfo(len(names), names, (None, None, 3), len(paths))
        examples = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))

        def decode(path, label):
            return _decode(tf.io.read_file(path), channels), label

        return examples, (decode, "unreadable image", lambda path, label: path), info, channels
    records = _common.tfrecords(_common.glob_files(rest, source), counter)
    if records is None:
        raise ValueError(f"`source`={source!r}: every matching TFRecord file is empty.")
    info = None  # filled by the caller (needs num_classes)

    def decode_record(record):
        features = tf.io.parse_single_example(record, _TFRECORD_SPEC)
        label = tf.cast(features["image/class/label"] - label_offset, tf.int32)
        tf.debugging.assert_non_negative(label, "negative label")
        return _decode(features["image/encoded"], channels), label

    describe = lambda r: tf.strings.join(  # noqa: E731
        [source, ": record of ", tf.strings.as_string(tf.strings.length(r)), " bytes"])
    return records, (decode_record, "undecodable tf.train.Example image", describe), info, channels


# ---------------------------------------------------------------------------------------------
# Per-image preprocessing (stateless: randomness depends on (seed, element index) only).


def _match_channels(image, channels):
    have = image.shape[-1]
    if have == channels or have is None:
        return image
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"`channels`={channels}: cannot convert images with {have} channels.")


def _resize(image, size):
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def _center_crop(image, size, fraction):
    """Aspect-preserving central crop covering `fraction` of the shorter side, resized to `size`."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target_aspect = size[1] / size[0]
    crop_h = fraction * tf.minimum(shape[0], shape[1] / target_aspect)
    crop_w = crop_h * target_aspect
    crop_h = tf.maximum(tf.cast(tf.round(crop_h), tf.int32), 1)
    crop_w = tf.maximum(tf.cast(tf.round(crop_w), tf.int32), 1)
    top = (tf.shape(image)[0] - crop_h) // 2
    left = (tf.shape(image)[1] - crop_w) // 2
    return _resize(image[top : top + crop_h, left : left + crop_w], size)


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
            (aspect-preserving center crop of `center_crop_fraction` of the shorter side,
            resized to image_size; no randomness).
        seed: int; crop/flip randomness is a stateless function of (seed, element index), so
            it resumes exactly from an iterator checkpoint. RandAugment/MixUp/CutMix are Keras
            layers seeded with `seed` (reproducible from the start of a run).
        num_classes: needed for one-hot labels from TFRecords (default: read from the data).
        channels: output channels (default: 1 for digits, else 3; converts gray <-> RGB).
        random_resized_crop, horizontal_flip: None = on, except for the digits default (8x8
            digits are neither mirror-symmetric nor croppable without losing strokes).
        crop_scale, crop_ratio: area fraction and aspect-ratio ranges of the crop.
        rand_augment: apply `keras.layers.RandAugment(value_range=(0, 255), num_ops, factor)`.
        mixup_alpha, cutmix_alpha: > 0 turns on `keras.layers.MixUp(alpha)` /
            `keras.layers.CutMix(factor)`; with both, each batch uses one of them (p = 0.5).
        label_smoothing: epsilon of uniform label smoothing (training only).
        center_crop_fraction: evaluation crop (default 0.875; 1.0 for digits).
        label_offset: subtracted from TFRecord labels.
        shuffle, repeat, drop_remainder: default to `training`.
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

    kind, _ = _common.split_source(source)
    is_digits = kind == "default"
    examples, decoder, info, channels = _source(source, split, data_dir, channels, label_offset)
    if info is None:
        info = dataset_info(source, split, data_dir, num_classes=num_classes, label_offset=label_offset)
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
    if center_crop_fraction is None:
        center_crop_fraction = 1.0 if is_digits else 0.875
    _common.check(0 < center_crop_fraction <= 1, "center_crop_fraction", center_crop_fraction, "a float in (0, 1]")
    mixing = training and (mixup_alpha > 0 or cutmix_alpha > 0)
    smoothing = label_smoothing if training else 0.0
    one_hot = mixing or smoothing > 0

    if decoder is not None:
        # Probe the finite stream (a repeated one of only unreadable images would never end).
        decode, reason, describe = decoder
        probe = _common.try_map(examples, lambda *e: decode(*e), (tf.zeros([1, 1, channels]), tf.constant(0)),
                                _common.skip_counter(source), reason, lambda *e: describe(*e))
        _common.require_elements(probe, 1, source, "readable images")
    if shuffle:
        examples = examples.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
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
        image = _match_channels(tf.cast(image, tf.float32), channels)
        if training:
            crop_seed, flip_seed = tf.unstack(
                tf.random.experimental.stateless_split(_common.element_seed(seed, index), 2))
            if random_resized_crop:
                image = _random_resized_crop(image, image_size, crop_scale, crop_ratio, crop_seed)
            else:
                image = _resize(image, image_size)
            if horizontal_flip:
                image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        else:
            image = _center_crop(image, image_size, center_crop_fraction)
        image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (*image_size, channels))
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
