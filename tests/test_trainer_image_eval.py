"""The image trainer evaluates on held-out data only: --eval_data / --eval_split resolve to
files disjoint from the training files, or the flags are refused before anything is written."""

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from trainers import train_image_classifier


def _records(path, count):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(np.full((4, 4, 1), i, np.uint8)).numpy()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _parse(tmp_path, *args):
    fv = flags.FlagValues()
    train_image_classifier.define_flags(fv)
    fv(["trainer", f"--model_dir={tmp_path / 'run'}", *args])
    return fv


@pytest.fixture
def data(tmp_path):
    _records(tmp_path / "fm-train.tfrecord", 6)
    _records(tmp_path / "fm-test.tfrecord", 4)
    (tmp_path / "folder" / "train" / "a").mkdir(parents=True)
    (tmp_path / "folder" / "test" / "a").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("args, match", [
    # The case: a TFRecord glob has no splits, so --eval_split=test would reread it.
    (["--data=tfrecord:{d}/fm-train.tfrecord"], r"--eval_data.*placeholder"),
    (["--data=tfrecord:{d}/fm-train.tfrecord", "--eval_data=tfrecord:{d}/fm-*.tfrecord"],
     "would read training data"),
    (["--data=tfrecord:{d}/fm-{{split}}.tfrecord", "--eval_split=train"], "would read training data"),
    (["--data={d}/folder", "--eval_split=train"], "would read training data"),
    (["--data=tfrecord:{d}/fm-train.tfrecord", "--eval_data={d}/folder", "--eval_split=train"], None),
])
def test_evaluation_on_training_data_is_refused_naming_the_flags(data, args, match):
    args = [a.format(d=data) for a in args]
    if match is None:
        _parse(data, *args)  # a folder's train split is not the TFRecord's training data
        return
    with pytest.raises(flags.IllegalFlagValueError, match=match) as error:
        _parse(data, *args)
    assert "--eval_split" in str(error.value) and "--data" in str(error.value)
    assert not (data / "run").exists()


def test_held_out_sources_are_accepted(data):
    fv = _parse(data, f"--data=tfrecord:{data}/fm-{{split}}.tfrecord")
    assert fv.eval_split == "test"
    fv = _parse(data, f"--data=tfrecord:{data}/fm-train.tfrecord",
                f"--eval_data=tfrecord:{data}/fm-test.tfrecord")
    assert fv.eval_data.endswith("fm-test.tfrecord")
    _parse(data, f"--data={data}/folder")  # folder: its test/ split
    _parse(data)  # digits: validation split
