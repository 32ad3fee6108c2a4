"""timm gMLP checkpoints -> GMLPImageClassifier: logits against timm's forward pass in NumPy.

The reference below is written from timm's module code paths (NCHW conv stem,
`flatten(2).transpose(1, 2)`, `nn.Linear` on (out, in) weights, the SGU's
projection applied to `v.transpose(-1, -2)`) and consumes torch-layout weights
directly; it never calls the converter's layout code.
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from numpy_reference import gelu
from numpy_reference import layer_norm

from keras_gmlp.convert import check_timm_state_dict
from keras_gmlp.convert import infer_timm_config
from keras_gmlp.convert import load_timm_state_dict
from keras_gmlp.convert import timm_state_dict_shapes
from keras_gmlp.convert import timm_to_keras
from keras_gmlp.models import VISION_PRESETS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCH, LAYERS, HIDDEN, FFN, CLASSES = 8, 2, 16, 32, 5


def random_timm_state_dict(rng, height, width, channels=3):
    """timm's gMLP names and torch shapes (timm/models/mlp_mixer.py), non-trivial random values."""
    n = (height // PATCH) * (width // PATCH)
    sd = {
        "stem.proj.weight": rng.normal(
            0, (channels * PATCH * PATCH) ** -0.5, (HIDDEN, channels, PATCH, PATCH)
        ),
        "stem.proj.bias": rng.normal(0, 0.1, HIDDEN),
    }
    for i in range(LAYERS):
        b = f"blocks.{i}."
        sd[b + "norm.weight"] = rng.uniform(0.5, 1.5, HIDDEN)
        sd[b + "norm.bias"] = rng.normal(0, 0.1, HIDDEN)
        sd[b + "mlp_channels.fc1.weight"] = rng.normal(0, HIDDEN**-0.5, (FFN, HIDDEN))
        sd[b + "mlp_channels.fc1.bias"] = rng.normal(0, 0.1, FFN)
        sd[b + "mlp_channels.gate.norm.weight"] = rng.uniform(0.5, 1.5, FFN // 2)
        sd[b + "mlp_channels.gate.norm.bias"] = rng.normal(0, 0.1, FFN // 2)
        # Unit-scale spatial mixing (not timm's near-zero init) so token order and W's
        # orientation change the logits.
        sd[b + "mlp_channels.gate.proj.weight"] = rng.normal(0, n**-0.5, (n, n))
        sd[b + "mlp_channels.gate.proj.bias"] = rng.normal(1, 0.1, n)
        sd[b + "mlp_channels.fc2.weight"] = rng.normal(0, (FFN // 2) ** -0.5, (HIDDEN, FFN // 2))
        sd[b + "mlp_channels.fc2.bias"] = rng.normal(0, 0.1, HIDDEN)
    sd["norm.weight"] = rng.uniform(0.5, 1.5, HIDDEN)
    sd["norm.bias"] = rng.normal(0, 0.1, HIDDEN)
    sd["head.weight"] = rng.normal(0, HIDDEN**-0.5, (CLASSES, HIDDEN))
    sd["head.bias"] = rng.normal(0, 0.1, CLASSES)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def timm_forward(sd, images, transpose_spatial=False):
    """timm's MlpMixer with SpatialGatingBlocks, eval mode, float64. images: NHWC in [0, 255]."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (images.astype(np.float64) / 255.0 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)
    x = x.transpose(0, 3, 1, 2)  # timm works in NCHW
    batch, channels, height, width = x.shape
    patches = x.reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    x = np.einsum("bcipjq,dcpq->bdij", patches, sd["stem.proj.weight"])
    x = x + sd["stem.proj.bias"][None, :, None, None]
    x = x.reshape(batch, x.shape[1], -1).transpose(0, 2, 1)  # flatten(2).transpose(1, 2)
    for i in range(LAYERS):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = layer_norm(x, p["norm.weight"], p["norm.bias"], 1e-6)
        h = gelu(h @ p["mlp_channels.fc1.weight"].T + p["mlp_channels.fc1.bias"])
        u, v = np.split(h, 2, axis=-1)  # x.chunk(2, dim=-1)
        gamma, beta = p["mlp_channels.gate.norm.weight"], p["mlp_channels.gate.norm.bias"]
        v = layer_norm(v, gamma, beta, 1e-5)
        w = p["mlp_channels.gate.proj.weight"]
        w = w.T if transpose_spatial else w
        v = v.transpose(0, 2, 1) @ w.T + p["mlp_channels.gate.proj.bias"]  # Linear over tokens
        h = u * v.transpose(0, 2, 1)
        x = x + h @ p["mlp_channels.fc2.weight"].T + p["mlp_channels.fc2.bias"]
    x = layer_norm(x, sd["norm.weight"], sd["norm.bias"], 1e-6)
    return x.mean(axis=1) @ sd["head.weight"].T + sd["head.bias"]


def random_images(rng, height, width, batch=2):
    return rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


@pytest.mark.parametrize("height, width", [(32, 48), (32, 32)])
def test_converted_logits_match_timm_forward(rng, height, width):
    sd = random_timm_state_dict(rng, height, width)
    images = random_images(rng, height, width)
    # Non-square images need image_shape; square ones are inferred from the shapes alone.
    overrides = {"image_shape": (height, width, 3)} if height != width else {}
    model = timm_to_keras(sd, **overrides)
    assert model.backbone.image_shape == (height, width, 3)
    assert model.backbone.num_layers == LAYERS and model.num_classes == CLASSES
    logits = keras.ops.convert_to_numpy(model(images))
    expected = timm_forward(sd, images)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # The comparison is sharp enough to see W read as (in, out) instead of (out, in).
    wrong = timm_forward(sd, images, transpose_spatial=True)
    assert np.abs(wrong - expected).max() > 100 * np.abs(logits - expected).max()


def test_full_timm_layouts_without_materialising():
    """Key names, shapes and timm's parameter counts for the three published sizes."""
    timm_counts = {
        "gmlp_ti16_224": 5_867_328, "gmlp_s16_224": 19_422_656, "gmlp_b16_224": 73_075_392
    }
    for preset, count in timm_counts.items():
        config = VISION_PRESETS[preset]
        d, f = config["hidden_dim"], config["ffn_dim"]
        shapes = timm_state_dict_shapes(config, 1000)
        assert len(shapes) == 2 + 30 * 10 + 2 + 2
        assert sum(math.prod(s) for s in shapes.values()) == count
        assert shapes["stem.proj.weight"] == (d, 3, 16, 16)
        assert shapes["blocks.29.mlp_channels.fc1.weight"] == (f, d)
        assert shapes["blocks.29.mlp_channels.gate.norm.bias"] == (f // 2,)
        assert shapes["blocks.29.mlp_channels.gate.proj.weight"] == (196, 196)
        assert shapes["blocks.29.mlp_channels.fc2.weight"] == (d, f // 2)
        assert shapes["head.weight"] == (1000, d)
        # Zero-stride arrays carry the shapes without allocating the weights.
        fake = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
        inferred, num_classes = infer_timm_config(fake)
        assert num_classes == 1000
        assert inferred == dict(VISION_PRESETS[preset])
        check_timm_state_dict(fake, inferred, num_classes)


def _conversion_error(sd, **kwargs):
    with pytest.raises(ValueError) as info:
        timm_to_keras(sd, **kwargs)
    return str(info.value)


def test_missing_unexpected_and_misshapen_keys_are_all_named(rng):
    sd = random_timm_state_dict(rng, 32, 32)
    del sd["blocks.1.mlp_channels.gate.proj.bias"]
    sd["blocks.0.mlp_channels.extra.weight"] = np.zeros((3, 4), np.float32)
    sd["blocks.1.mlp_channels.fc1.weight"] = np.zeros((FFN + 1, HIDDEN), np.float32)
    message = _conversion_error(sd)
    assert "missing key 'blocks.1.mlp_channels.gate.proj.bias' (expected shape (16,))" in message
    assert "unexpected key 'blocks.0.mlp_channels.extra.weight' (shape (3, 4))" in message
    assert "'blocks.1.mlp_channels.fc1.weight' has shape (33, 16)" in message
    assert "expects (32, 16)" in message


def test_wrong_preset_or_num_classes_names_shapes(rng):
    sd = random_timm_state_dict(rng, 32, 32)
    message = _conversion_error(sd, num_classes=7)
    assert "'head.weight' has shape (5, 16)" in message and "expects (7, 16)" in message
    assert "'head.bias' has shape (5,)" in message and "expects (7,)" in message
    message = _conversion_error(sd, preset="gmlp_tiny4_32")  # patch 4, 6 layers, d 64
    assert "'stem.proj.weight' has shape (16, 3, 8, 8)" in message
    assert "expects (64, 3, 4, 4)" in message
    assert "missing key 'blocks.5.norm.weight'" in message
    with pytest.raises(ValueError, match="'head.weight'"):
        timm_to_keras({k: v for k, v in sd.items() if not k.startswith("head.")})
    with pytest.raises(ValueError, match="not a square number; pass image_shape"):
        timm_to_keras(random_timm_state_dict(rng, 32, 48))


def test_wrapper_prefix_is_stripped_only_when_shared(rng):
    sd = random_timm_state_dict(rng, 32, 32)
    loaded = load_timm_state_dict({"module.model." + k: v for k, v in sd.items()})
    assert list(loaded) == list(sd)
    for key in sd:
        np.testing.assert_array_equal(loaded[key], sd[key])
    partial = {("module." + k if k.startswith("head") else k): v for k, v in sd.items()}
    message = _conversion_error(partial, num_classes=CLASSES)
    assert "unexpected key 'module.head.weight' (shape (5, 16))" in message
    assert "missing key 'head.weight' (expected shape (5, 16))" in message


def test_safetensors_file_round_trip(rng, tmp_path):
    from safetensors.numpy import save_file

    sd = random_timm_state_dict(rng, 32, 32)
    path = tmp_path / "gmlp.safetensors"
    save_file(sd, str(path))
    loaded = load_timm_state_dict(path)
    assert sorted(loaded) == sorted(sd)  # safetensors stores names sorted
    for key in sd:
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], sd[key])


def test_checkpoint_path_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_timm_state_dict(tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"weights\.h5.*\.safetensors"):
        load_timm_state_dict(odd)
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    with pytest.raises(ImportError, match=r"weights\.pth.*pip install torch.*safetensors"):
        load_timm_state_dict(pth)
    with pytest.raises(TypeError, match="list"):
        load_timm_state_dict([1, 2])


def test_torch_checkpoint(rng, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed: .pth loading untested")
    sd = random_timm_state_dict(rng, 32, 32)
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "train.pth.tar.pth"
    torch.save(tensors, plain)
    torch.save({"epoch": 3, "state_dict": {"module." + k: t for k, t in tensors.items()}}, wrapped)
    for path in (plain, wrapped):
        loaded = load_timm_state_dict(path)
        assert list(loaded) == list(sd)
        for key in sd:
            np.testing.assert_array_equal(loaded[key], sd[key])


def test_cli_writes_a_keras_file_with_the_same_logits(rng, tmp_path):
    from safetensors.numpy import save_file

    sd = random_timm_state_dict(rng, 32, 32)
    checkpoint, output = tmp_path / "gmlp.safetensors", tmp_path / "gmlp.keras"
    save_file(sd, str(checkpoint))
    result = subprocess.run(
        [sys.executable, "-m", "keras_gmlp.convert", "--checkpoint", str(checkpoint),
         "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_classes=5" in result.stdout
    images = random_images(rng, 32, 32)
    loaded = keras.saving.load_model(output)
    logits = keras.ops.convert_to_numpy(loaded(images))
    in_process = keras.ops.convert_to_numpy(timm_to_keras(sd)(images))
    np.testing.assert_allclose(logits, in_process, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, timm_forward(sd, images), rtol=1e-4, atol=1e-4)


def test_cli_reports_a_bad_checkpoint(rng, tmp_path):
    from safetensors.numpy import save_file

    from keras_gmlp.convert import cli

    sd = random_timm_state_dict(rng, 32, 32)
    sd["norm.bias"] = np.zeros(HIDDEN + 2, np.float32)
    checkpoint = tmp_path / "bad.safetensors"
    save_file(sd, str(checkpoint))
    output = tmp_path / "bad.keras"
    with pytest.raises(ValueError, match=r"'norm.bias' has shape \(18,\)"):
        cli.main(["--checkpoint", str(checkpoint), "--output", str(output)])
    assert not output.exists()
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "x.h5")])


def test_cli_exports_a_savedmodel_with_the_same_logits(rng, tmp_path):
    pytest.importorskip("keras_gmlp.export", reason="keras_gmlp.export is not in this checkout")
    import tensorflow as tf
    from safetensors.numpy import save_file

    from keras_gmlp.convert import cli

    sd = random_timm_state_dict(rng, 32, 32)
    checkpoint = tmp_path / "gmlp.safetensors"
    save_file(sd, str(checkpoint))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(CLASSES)))
    export_base = tmp_path / "export"
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "gmlp.keras"),
            "--export_dir", str(export_base), "--label_names", str(labels)]
    assert cli.main(argv) == 0
    (version,) = os.listdir(export_base)
    serve = tf.saved_model.load(str(export_base / version)).signatures["serving_default"]
    images = random_images(rng, 32, 32)
    outputs = serve(images=tf.constant(images))
    expected = timm_forward(sd, images)
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    expected_labels = [f"class {i}" for i in expected.argmax(-1)]
    assert [label.decode() for label in outputs["predicted_label"].numpy()] == expected_labels
    labels.write_text("a\nb\n")
    with pytest.raises(ValueError, match="has 2 names but the checkpoint has 5 classes"):
        cli.main(argv)
