"""Export versions on any TensorFlow file system, with concurrent and killed exporters.

`ram://` (TensorFlow's in-memory file system) stands in for `gs://`: both are reached only
through `tf.io.gfile`, so any `os.*` call in the exporters would write a local `ram:/` tree.
A concurrent exporter is simulated deterministically: it publishes while the other is building.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gmlp.export import export_model
from keras_gmlp.export import read_keras_metadata
from keras_gmlp.export import save_keras
from keras_gmlp.export import common
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPVisionBackbone

LABELS = ["ant", "bee"]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return GMLPImageClassifier(GMLPVisionBackbone(
        image_shape=(8, 8, 1), patch_size=4, num_layers=1, hidden_dim=8, ffn_dim=16), 2)


def _listing(base):
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(base))


def test_export_to_a_remote_file_system_goes_through_gfile(model, tmp_path, monkeypatch, rng):
    monkeypatch.chdir(tmp_path)
    base = "ram://exports/gmlp_image"
    path = export_model(model, base, label_names=LABELS)
    assert path == base + "/1"
    assert os.listdir(tmp_path) == []  # no local "ram:" tree
    assert _listing(base) == ["1"]  # published, scratch directory removed
    for name in ("saved_model.pb", "variables/variables.index", "assets/labels.txt",
                 "assets/keras_gmlp.json"):
        assert tf.io.gfile.exists(f"{path}/{name}"), name
    loaded = tf.saved_model.load(path)
    with tf.io.gfile.GFile(loaded.labels_file.asset_path.numpy().decode()) as f:
        assert f.read().splitlines() == LABELS
    images = rng.uniform(0, 255, size=(3, 8, 8, 1)).astype("float32")
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["logits"].numpy(), model.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert export_model(model, base) == base + "/2"
    keras_path = save_keras(model, "ram://exports/model.keras")
    assert read_keras_metadata(keras_path)["model_class"] == "GMLPImageClassifier"
    assert os.listdir(tmp_path) == []


def _racing(make_module, export):
    """`make_module` that runs `export()` (a concurrent exporter finishing first) before building."""
    def make(asset_dir):
        export()
        return make_module(asset_dir)
    return make


def test_concurrent_exporters_with_version_none_each_get_their_own_version(model, tmp_path,
                                                                           monkeypatch):
    base = str(tmp_path / "base")
    save = common.save_versioned
    done = []

    def racing_save(make_module, export_base, version):
        if not done:
            done.append(True)
            make_module = _racing(make_module, lambda: done.append(export_model(model, base)))
        return save(make_module, export_base, version)

    monkeypatch.setattr("keras_gmlp.export.image.save_versioned", racing_save)
    # Both chose version 1; the other one published it first: this one takes 2 (it used to fail
    # with a raw "Directory not empty" rename error).
    assert export_model(model, base) == os.path.join(base, "2")
    assert done[1] == os.path.join(base, "1")
    assert _listing(base) == ["1", "2"]
    for version in ("1", "2"):
        tf.saved_model.load(os.path.join(base, version))  # both complete


def test_an_explicit_version_taken_meanwhile_raises_and_leaves_no_scratch(model, tmp_path,
                                                                         monkeypatch):
    base = str(tmp_path / "base")
    save = common.save_versioned

    def racing_save(make_module, export_base, version):
        monkeypatch.setattr("keras_gmlp.export.image.save_versioned", save)
        make_module = _racing(make_module, lambda: export_model(model, base, version=7))
        return save(make_module, export_base, version)

    monkeypatch.setattr("keras_gmlp.export.image.save_versioned", racing_save)
    with pytest.raises(FileExistsError, match=r"'.*/7' was written by another exporter"):
        export_model(model, base, version=7)
    assert _listing(base) == ["7"]


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_scratch_directories_of_killed_exports_are_removed(model, tmp_path):
    base = tmp_path / "base"
    host = socket.gethostname()
    owners = {
        ".tmp-export-3-dead": {"host": host, "pid": _dead_pid()},  # killed on this host
        ".tmp-export-4-alive": {"host": host, "pid": os.getpid()},  # still running
        ".tmp-export-5-remote": {"host": host + "-other", "pid": 1, "time": time.time()},
        ".tmp-export-2-remote-old": {"host": host + "-other", "pid": 1,
                                     "time": time.time() - 2 * 24 * 3600},  # two days old
    }
    for name, owner in owners.items():
        (base / name / "saved_model").mkdir(parents=True)
        (base / name / "owner.json").write_text(json.dumps(owner))
    (base / ".tmp-export-6-legacy" / "saved_model").mkdir(parents=True)  # no owner record
    old = (base / ".tmp-export-6-legacy").stat().st_mtime - 7200  # 2 hours old
    os.utime(base / ".tmp-export-6-legacy", (old, old))
    (base / ".tmp-export-8-new").mkdir()  # no record yet, just created: kept
    (base / "notes").mkdir()
    assert export_model(model, base) == str(base / "1")
    assert _listing(str(base)) == [".tmp-export-4-alive", ".tmp-export-5-remote",
                                   ".tmp-export-8-new", "1", "notes"]
