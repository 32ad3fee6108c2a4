"""IDX files (the MNIST / Fashion-MNIST format) read into NumPy, and the Fashion-MNIST source.

The format (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a type
code (0x08 = uint8), the number of dimensions, then one uint32 size per dimension, then the
values. Files may be gzipped. Debian's `dataset-fashion-mnist` package installs the full
70,000-image set offline::

    apt-get update && apt-get install -y dataset-fashion-mnist   # /usr/share/datasets/fashion-mnist

Image sources (`keras_gmlp.data.image_dataset`): "idx:DIR" reads DIR/{train,t10k}-images-idx3-ubyte
and the matching labels (".gz" or not); "fashion_mnist" is "idx:" + `FASHION_MNIST_DIR`.
"""

import gzip
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                        "sneaker", "bag", "ankle boot")
# IDX file prefixes of each split ("test" and "validation" are the t10k files).
SPLIT_PREFIXES = {"train": "train", "test": "t10k", "validation": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """The array stored in the IDX file `path` (gzipped when its name ends in ".gz")."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"`path`={str(path)!r}: expected an IDX file (bytes 0, 0, a type code, ndim).")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"`path`={str(path)!r}: header says shape {shape} ({expected} bytes), "
                         f"the file has {len(data)} bytes.")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Writes `array` (uint8) as an IDX file (gzipped when `path` ends in ".gz"); for tests."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find(directory, prefix, kind, source):
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte", f"{prefix}-{kind}.idx"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    hint = " (apt-get install dataset-fashion-mnist)" if directory == FASHION_MNIST_DIR else ""
    raise ValueError(f"`source`={source!r}: no {prefix}-{kind}-ubyte[.gz] in {directory!r}{hint}.")


def load_split(directory, split, source=None):
    """(images uint8 (n, h, w, 1), labels int32 (n,)) of `split` ("train", "test") in `directory`."""
    source = source or f"idx:{directory}"
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"`split`={split!r}: expected one of {sorted(SPLIT_PREFIXES)} for {source!r}.")
    prefix = SPLIT_PREFIXES[split]
    images = read_idx(_find(directory, prefix, "images-idx3", source))
    labels = read_idx(_find(directory, prefix, "labels-idx1", source))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"`source`={source!r}: images {images.shape} and labels {labels.shape} "
                         "do not pair up as (n, h, w) and (n,).")
    return images[..., None], labels.astype(np.int32)
