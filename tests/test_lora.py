"""LoRA on keras_gmlp's backbones (keras-hub's `enable_lora` / `save_lora_weights` /
`load_lora_weights`): the default targets are the gMLP and tiny-attention projections, only the
LoRA factors train in the backbone, LoRA really acts in the forward pass (a model with the
merged kernels computes the same), classifiers fine-tune that way, LoRA files round trip
exactly, and files that do not fit raise."""

import keras
import numpy as np
import pytest

from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPVisionBackbone

TEXT = dict(vocabulary_size=30, num_layers=2, hidden_dim=8, ffn_dim=16, sequence_length=6)
AMLP = dict(TEXT, tiny_attention_dim=4)
VISION = dict(image_shape=(8, 8, 3), patch_size=4, num_layers=2, hidden_dim=8, ffn_dim=16)
BLOCK_TARGETS = ["channel_projection_u", "channel_projection_v", "channel_projection_out"]
ATTENTION_TARGETS = ["tiny_attention/qkv", "tiny_attention/output_projection"]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _text_inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TEXT["vocabulary_size"], (batch, TEXT["sequence_length"])).astype("int32")
    mask = np.ones_like(ids)
    ids[0, -2:], mask[0, -2:] = 0, 0
    return {"token_ids": ids, "padding_mask": mask}


def _images(batch=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, 8, 8, 3)).astype("float32")


def _lora_paths(backbone):
    return sorted(layer.path for layer in backbone._flatten_layers() if getattr(layer, "lora_enabled", False))


@pytest.mark.parametrize("kind", ["text", "amlp", "vision"])
def test_enable_lora_defaults_adapt_the_projections_and_train_only_lora(kind):
    cls, kwargs = (GMLPVisionBackbone, VISION) if kind == "vision" else (GMLPBackbone, AMLP if kind == "amlp" else TEXT)
    backbone = cls(**kwargs)
    backbone.enable_lora(2)
    targets = BLOCK_TARGETS + (ATTENTION_TARGETS if kind == "amlp" else [])
    assert _lora_paths(backbone) == sorted(f"block_{i}/{name}" for i in range(2) for name in targets)
    assert sorted(w.path for w in backbone.trainable_weights) == sorted(
        f"{path}/lora_kernel_{ab}" for path in _lora_paths(backbone) for ab in "ab")
    assert backbone.get_lora_target_names() == backbone.default_lora_layer_names()


def test_enable_lora_rejects_names_that_match_nothing_without_freezing():
    backbone = GMLPBackbone(**TEXT)
    trainable = len(backbone.trainable_weights)
    with pytest.raises(ValueError, match=r"`target_layer_names`=\['query_dense'\]: expected names of "
                                         r"this backbone's Dense/EinsumDense layers, such as \['channel_projection_out'"):
        backbone.enable_lora(2, target_layer_names=["query_dense"])
    assert len(backbone.trainable_weights) == trainable and not _lora_paths(backbone)
    with pytest.raises(ValueError, match="`rank`=0"):
        backbone.enable_lora(0)


def _merged_copy(backbone, cls, kwargs):
    """A plain backbone whose kernels are `backbone`'s with LoRA merged (W + alpha / r * A B)."""
    merged = cls(**kwargs)
    merged.set_weights([_numpy(w) for w in backbone.weights if "lora_kernel" not in w.path])
    lora_layers = {layer.path: layer for layer in backbone._flatten_layers() if getattr(layer, "lora_enabled", False)}
    for layer in merged._flatten_layers():
        if layer.path in lora_layers:
            source = lora_layers[layer.path]
            delta = (source.lora_alpha / source.lora_rank) * (
                _numpy(source.lora_kernel_a) @ _numpy(source.lora_kernel_b))
            layer.kernel.assign(_numpy(source._kernel) + delta)
    return merged


@pytest.mark.parametrize("task", ["text", "image"])
def test_classifier_fine_tunes_with_lora_and_lora_files_round_trip(task, tmp_path):
    if task == "text":
        cls, kwargs, x = GMLPBackbone, AMLP, _text_inputs(8)
        backbone = cls(**kwargs)
        model = GMLPTextClassifier(backbone, 2, dropout=0.0)
    else:
        cls, kwargs, x = GMLPVisionBackbone, VISION, _images(8)
        backbone = cls(**kwargs)
        model = GMLPImageClassifier(backbone, 2)
    y = np.array([0, 1] * 4)
    base_weights = [_numpy(w) for w in backbone.weights]
    backbone.enable_lora(2)
    frozen = {w.path: _numpy(w) for w in backbone.weights if "lora_kernel" not in w.path}
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=8, epochs=15, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history
    for w in backbone.weights:
        if w.path in frozen:
            np.testing.assert_array_equal(_numpy(w), frozen[w.path], err_msg=w.path)
    assert all(np.any(_numpy(w) != 0) for w in backbone.weights if "lora_kernel_b" in w.path)
    want = _numpy(backbone(x))
    # LoRA acts through Dense.call: merging its factors into plain kernels gives the outputs.
    np.testing.assert_allclose(_numpy(_merged_copy(backbone, cls, kwargs)(x)), want, atol=1e-5, rtol=1e-5)

    backbone.save_lora_weights(str(tmp_path / "adapter.lora.h5"))
    fresh = cls(**kwargs)
    fresh.set_weights(base_weights)
    assert not np.allclose(_numpy(fresh(x)), want, atol=1e-4)
    fresh.load_lora_weights(str(tmp_path / "adapter.lora.h5"))  # enables LoRA on the defaults
    assert _lora_paths(fresh) == _lora_paths(backbone)
    np.testing.assert_array_equal(_numpy(fresh(x)), want)


def test_lora_files_that_do_not_fit_raise(tmp_path):
    saved = GMLPBackbone(**TEXT)
    saved.enable_lora(2, target_layer_names=["channel_projection_out"])
    saved.save_lora_weights(str(tmp_path / "out_only.lora.h5"))
    path = str(tmp_path / "out_only.lora.h5")

    # A fresh backbone would get the default targets: not the file's layers. Nothing changes.
    fresh = GMLPBackbone(**TEXT)
    trainable = len(fresh.trainable_weights)
    with pytest.raises(ValueError, match=r"the file has them for \['block_0/channel_projection_out', "
                                         r"'block_1/channel_projection_out'\]"):
        fresh.load_lora_weights(path)
    assert not _lora_paths(fresh) and len(fresh.trainable_weights) == trainable
    # The same layers at another rank.
    other_rank = GMLPBackbone(**TEXT)
    other_rank.enable_lora(3, target_layer_names=["channel_projection_out"])
    with pytest.raises(ValueError, match="rank 3 .* the file's are rank 2"):
        other_rank.load_lora_weights(path)
    # The same layer indices, other shapes (another architecture).
    wider = GMLPBackbone(**dict(TEXT, hidden_dim=16))
    wider.enable_lora(2, target_layer_names=["channel_projection_out"])
    with pytest.raises(ValueError, match=r"shapes .* for block_0/channel_projection_out"):
        wider.load_lora_weights(path)
    # Fitting: the layers the file was saved from.
    same = GMLPBackbone(**TEXT)
    same.enable_lora(2, target_layer_names=["channel_projection_out"])
    same.load_lora_weights(path)
    for a, b in zip(same.weights, saved.weights):
        if "lora_kernel" in a.path:
            np.testing.assert_array_equal(_numpy(a), _numpy(b))
    import h5py

    with h5py.File(str(tmp_path / "empty.h5"), "w"):
        pass
    with pytest.raises(ValueError, match="a .lora.h5 file written by save_lora_weights"):
        same.load_lora_weights(str(tmp_path / "empty.h5"))
