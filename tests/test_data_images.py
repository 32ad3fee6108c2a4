"""Image input pipelines against independent truths: scikit-learn's digits, the pixels of the
PNG files written here, mirror images, closed-form label smoothing, and resumed iterators."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import model_zoo
from keras_gmlp.data import images
from keras_gmlp.data import skipped_counts
from keras_gmlp.models import GMLPImageClassifier


def _digits_split(split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, validation = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target)
    index = np.sort(train if split == "train" else validation)
    return digits.images[index] * 255.0 / 16.0, digits.target[index]


def _all(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def _write_png_folder(root, split, classes, size=(6, 5), per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for name in classes:
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            array = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            path = root / split / name / f"{i}.png"
            tf.io.write_file(str(path), tf.io.encode_png(array))
            pixels[str(path)] = array
    return pixels


def _example(encoded, label):
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_digits_default_is_logged_and_matches_scikit_learn(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        dataset = images.image_dataset(split="validation", training=False, batch_size=100)
    assert "using default image dataset scikit-learn load_digits" in caplog.text
    x, y = _all(dataset)
    expected_x, expected_y = _digits_split("validation")
    assert x.shape == (360, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x[..., 0], expected_x, atol=1e-3)
    np.testing.assert_array_equal(y, expected_y)
    assert x.max() == pytest.approx(255.0) and x.min() == 0.0
    info = images.dataset_info()
    assert (info.num_classes, info.image_shape, info.num_examples) == (10, (8, 8, 1), 1437)
    assert info.label_names == tuple("0123456789")
    assert images.dataset_info(split="validation").num_examples + info.num_examples == 1797


def test_digits_training_batches_for_an_rgb_model():
    dataset = images.image_dataset(image_size=16, batch_size=32, channels=3, seed=1)
    x, y = next(iter(dataset))
    assert x.shape == (32, 16, 16, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
    assert set(y.numpy()) <= set(range(10))


def test_flip_gives_the_image_or_its_mirror():
    plain, labels = _all(images.image_dataset(split="validation", training=False, batch_size=360))
    flipped, flipped_labels = _all(images.image_dataset(
        split="validation", batch_size=360, horizontal_flip=True, shuffle=False, repeat=False))
    np.testing.assert_array_equal(flipped_labels, labels)
    same = np.all(np.isclose(flipped, plain, atol=1e-3), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(flipped, plain[:, :, ::-1], atol=1e-3), axis=(1, 2, 3))
    assert (same | mirrored).all()
    symmetric = np.all(np.isclose(plain, plain[:, :, ::-1], atol=1e-3), axis=(1, 2, 3))
    assert 0.3 < mirrored[~symmetric].mean() < 0.7


def test_image_folder_pixels_labels_and_corrupt_file_counted(tmp_path):
    pixels = _write_png_folder(tmp_path, "train", ["zebra", "ant", "cat"])
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored: not an image extension")
    source = str(tmp_path)
    info = images.dataset_info(source)
    assert info.label_names == ("ant", "cat", "zebra") and info.num_classes == 3
    x, y = _all(images.image_dataset(source, image_size=(6, 5), batch_size=4, training=False,
                                     center_crop_fraction=1.0))
    order = sorted(pixels, key=lambda p: (info.label_names.index(p.split("/")[-2]), p))
    np.testing.assert_allclose(x, np.stack([pixels[p] for p in order]).astype(np.float32), atol=1e-3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])
    assert skipped_counts()[source] == 1


def test_tfrecords_with_corrupt_file_and_undecodable_image_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8) for _ in range(3)]
    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        for label, array in enumerate(arrays):
            writer.write(_example(tf.io.encode_png(array).numpy(), label + 1))
        writer.write(_example(b"not an image", 1))
    with tf.io.TFRecordWriter(str(tmp_path / "b.tfrecord")) as writer:
        writer.write(_example(tf.io.encode_png(arrays[0]).numpy(), 1))
    truncated = (tmp_path / "b.tfrecord").read_bytes()[:-7]
    (tmp_path / "b.tfrecord").write_bytes(truncated)
    source = "tfrecord:" + str(tmp_path / "*.tfrecord")
    dataset = images.image_dataset(source, image_size=4, batch_size=8, training=False, label_offset=1,
                                   center_crop_fraction=1.0)
    x, y = _all(dataset)
    np.testing.assert_array_equal(y, [0, 1, 2])
    np.testing.assert_allclose(x, np.stack(arrays).astype(np.float32), atol=1e-3)
    assert skipped_counts()[source] == 2
    assert images.dataset_info(source, label_offset=1).num_classes == 3


def test_sources_that_yield_nothing_raise(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        images.image_dataset(str(tmp_path), split="validation", image_size=4)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="yields no readable images"):
        images.image_dataset(str(tmp_path), image_size=4)
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        images.image_dataset("tfrecord:" + str(tmp_path / "empty.tfrecord"), image_size=4, num_classes=2)


def test_label_smoothing_is_exact_and_mixing_gives_soft_labels():
    _, labels = _all(images.image_dataset(split="validation", training=False, batch_size=360))
    smooth, smooth_labels = _all(images.image_dataset(
        split="validation", batch_size=360, label_smoothing=0.1, shuffle=False, repeat=False))
    expected = np.full((360, 10), 0.01, np.float32)
    expected[np.arange(360), labels] = 0.91
    np.testing.assert_allclose(smooth_labels, expected, atol=1e-6)
    dataset = images.image_dataset(batch_size=16, mixup_alpha=0.8, cutmix_alpha=1.0, rand_augment=True,
                                   label_smoothing=0.1, image_size=16)
    for x, y in dataset.take(4):
        assert x.shape == (16, 16, 16, 1) and y.shape == (16, 10) and y.dtype == tf.float32
        np.testing.assert_allclose(tf.reduce_sum(y, axis=1), 1.0, atol=1e-5)
        assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(x)) <= 255 + 1e-3


def test_augmented_stream_is_seeded_and_resumes_from_an_iterator_checkpoint(tmp_path):
    make = lambda seed=4, skip=0: images.image_dataset(  # noqa: E731
        image_size=8, batch_size=64, seed=seed, random_resized_crop=True, horizontal_flip=True,
        shuffle_buffer_size=256, skip_batches=skip)
    uninterrupted = [tuple(t.numpy() for t in b) for b in make().take(8)]
    np.testing.assert_array_equal(uninterrupted[0][0], next(iter(make()))[0])
    assert not np.array_equal(uninterrupted[0][0], next(iter(make(5)))[0])
    iterator = iter(make())
    for _ in range(4):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt"))
    resumed = iter(make())
    tf.train.Checkpoint(iterator=resumed).restore(path).assert_consumed()
    skipped = iter(make(skip=4))
    for expected in uninterrupted[4:]:
        for got in (next(resumed), next(skipped)):
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


def test_sharding_partitions_examples():
    whole = _all(images.image_dataset(split="validation", training=False, shuffle=True, batch_size=1))
    shards = [
        _all(images.image_dataset(split="validation", training=False, shuffle=True, batch_size=1,
                                  input_context=tf.distribute.InputContext(2, i, 1)))
        for i in range(2)
    ]
    for i in range(2):
        np.testing.assert_array_equal(shards[i][0], whole[0][i::2])
        np.testing.assert_array_equal(shards[i][1], whole[1][i::2])


def test_tfds_images_read_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        info = images.dataset_info("tfds:cifar10", data_dir=str(tmp_path))
        x, y = next(iter(images.image_dataset("tfds:cifar10", batch_size=4, data_dir=str(tmp_path))))
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert x.shape == (4, 32, 32, 3) and y.dtype == tf.int32
    with pytest.raises(ValueError, match="data_dir"):
        images.image_dataset("tfds:cifar10", data_dir=str(tmp_path))


def test_digits_batches_train_an_image_classifier():
    model = GMLPImageClassifier(model_zoo.vision_backbone(), num_classes=10)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images.image_dataset(batch_size=16), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "`batch_size`=0"),
        ({"image_size": (8, -1)}, r"`image_size`=\(8, -1\)"),
        ({"label_smoothing": 1.0}, "`label_smoothing`=1.0"),
        ({"mixup_alpha": -1}, "`mixup_alpha`=-1"),
        ({"channels": 2}, "`channels`=2"),
        ({"split": "dev"}, "`split`='dev'"),
        ({"crop_scale": (0.5, 0.1)}, r"`crop_scale`=\(0.5, 0.1\)"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        images.image_dataset(**kwargs)


def test_folder_without_image_size_asks_for_it(tmp_path):
    _write_png_folder(tmp_path, "train", ["a"])
    with pytest.raises(ValueError, match="`image_size`=None"):
        images.image_dataset(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Order: a source listed class by class trains on batches mixed like a shuffled one.

CLASSES, PER_CLASS, BATCH = 10, 40, 40


def _id_pixels(index, label):
    """A 2x2 gray image naming its file: (index // 256, index % 256, label, 0)."""
    return np.array([[index // 256, index % 256], [label, 0]], np.uint8)[..., None]


def _decoded_ids(x):
    x = np.rint(x[..., 0]).astype(int)
    return x[:, 0, 0] * 256 + x[:, 0, 1], x[:, 1, 0]


def _class_mix(labels):
    """Mean distinct classes per batch and mean share of a batch's commonest class."""
    batches = labels.reshape(-1, BATCH)
    distinct = np.mean([len(set(b)) for b in batches])
    top_share = np.mean([np.bincount(b, minlength=CLASSES).max() / BATCH for b in batches])
    return distinct, top_share


def _assert_mixed_epochs(dataset, total):
    iterator = iter(dataset)
    epochs = []
    for _ in range(2):
        x = np.concatenate([next(iterator)[0].numpy() for _ in range(total // BATCH)])
        epochs.append(_decoded_ids(x))
    for ids, labels in epochs:
        np.testing.assert_array_equal(np.sort(ids), np.arange(total))  # each file once per epoch
        distinct, top_share = _class_mix(labels)
        # Uniform draws of 40 from 10 classes: about 9.9 classes a batch, commonest share ~0.2.
        assert distinct >= 8.5 and top_share <= 0.35, (distinct, top_share)
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # reshuffled each epoch


def _sorted_folder(root):
    index = 0
    for label in range(CLASSES):
        (root / "train" / f"class_{label}").mkdir(parents=True)
        for i in range(PER_CLASS):
            path = root / "train" / f"class_{label}" / f"{i:03d}.png"
            tf.io.write_file(str(path), tf.io.encode_png(_id_pixels(index, label)))
            index += 1


def test_class_sorted_folder_batches_mix_classes_like_a_shuffled_one(tmp_path):
    _sorted_folder(tmp_path)
    # A buffer much smaller than the list, as 10,000 of 60,000 files: not enough on its own.
    make = lambda: images.image_dataset(  # noqa: E731
        str(tmp_path), image_size=2, batch_size=BATCH, seed=3, shuffle_buffer_size=20,
        random_resized_crop=False, horizontal_flip=False)
    _assert_mixed_epochs(make(), CLASSES * PER_CLASS)
    # Exact resume of the whole-list shuffle from an iterator checkpoint.
    uninterrupted = [b[0].numpy() for b in make().take(6)]
    iterator = iter(make())
    for _ in range(3):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt" / "it"))
    resumed = iter(make())
    tf.train.Checkpoint(iterator=resumed).restore(path).assert_consumed()
    for expected in uninterrupted[3:]:
        np.testing.assert_array_equal(next(resumed)[0].numpy(), expected)


def _write_records(path, pairs):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index, label in pairs:
            writer.write(_example(tf.io.encode_png(_id_pixels(index, label)).numpy(), label))


@pytest.mark.parametrize("in_memory", [True, False])
def test_class_sorted_tfrecords_batches_mix_classes_like_shuffled_ones(tmp_path, monkeypatch, in_memory):
    pairs = [(i, i // PER_CLASS) for i in range(CLASSES * PER_CLASS)]
    if in_memory:  # one class-sorted file, read into memory and shuffled whole
        _write_records(tmp_path / "all.tfrecord", pairs)
    else:  # one shard per class, too large (here: any size) to hold
        monkeypatch.setattr(images, "IN_MEMORY_TFRECORD_BYTES", 0)
        for label in range(CLASSES):
            _write_records(tmp_path / f"shard-{label}.tfrecord", pairs[label * PER_CLASS:(label + 1) * PER_CLASS])
    dataset = images.image_dataset("tfrecord:" + str(tmp_path / "*.tfrecord"), image_size=2,
                                   batch_size=BATCH, seed=3, shuffle_buffer_size=20,
                                   random_resized_crop=False, horizontal_flip=False, num_classes=CLASSES)
    _assert_mixed_epochs(dataset, CLASSES * PER_CLASS)


def test_tfrecord_split_placeholder_and_evaluation_never_reads_training_records(tmp_path):
    _write_records(tmp_path / "d-train.tfrecord", [(i, i % 2) for i in range(6)])
    _write_records(tmp_path / "d-test.tfrecord", [(100 + i, i % 2) for i in range(4)])
    source = "tfrecord:" + str(tmp_path / "d-{split}.tfrecord")
    x, _ = _all(images.image_dataset(source, "test", image_size=2, batch_size=8, training=False))
    np.testing.assert_array_equal(_decoded_ids(x)[0], [100, 101, 102, 103])
    x, _ = _all(images.image_dataset(source, "train", image_size=2, batch_size=8, training=False))
    np.testing.assert_array_equal(_decoded_ids(x)[0], np.arange(6))
    plain = "tfrecord:" + str(tmp_path / "d-train.tfrecord")
    with pytest.raises(ValueError, match=r"`split`='test'.*\{split\} placeholder"):
        images.image_dataset(plain, "test", image_size=2, training=False)
    assert not images.data_identity(source, "test") & images.data_identity(source, "train")
    assert images.data_identity(plain, "train") == images.data_identity(source, "train")


def test_grayscale_sources_give_one_channel_unless_asked(tmp_path):
    gray, rgb = tmp_path / "gray", tmp_path / "rgb"
    for root, channels in ((gray, 1), (rgb, 3)):
        (root / "train" / "a").mkdir(parents=True)
        for i in range(3):
            pixels = np.full((4, 4, channels), 40 * i + 10, np.uint8)
            if channels == 3:
                pixels[..., 1] = 200
            tf.io.write_file(str(root / "train" / "a" / f"{i}.png"), tf.io.encode_png(pixels))
    assert images.dataset_info(str(gray)).image_shape == (None, None, 1)
    assert images.dataset_info(str(rgb)).image_shape == (None, None, 3)
    x, _ = next(iter(images.image_dataset(str(gray), image_size=4, batch_size=3, training=False)))
    assert x.shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(x[:, 0, 0, 0], [10, 50, 90])
    x, _ = next(iter(images.image_dataset(str(gray), image_size=4, batch_size=3, training=False, channels=3)))
    assert x.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    x, _ = next(iter(images.image_dataset(str(rgb), image_size=4, batch_size=3, training=False)))
    assert x.shape == (3, 4, 4, 3)
