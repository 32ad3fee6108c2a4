"""`model.quantize("int8")` on keras_gmlp models: the quantized Dense layers are really called
(outputs stay close to float32) and a quantized model survives a `.keras` round trip."""

import os

import keras
import numpy as np
import pytest

from keras_gmlp.layers import GMLPBlock
from keras_gmlp.models import GMLPBackbone

N, D, FFN = 16, 64, 128


def _relative_error(got, want):
    got, want = keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _assert_quantized_close(model, inputs):
    """Quantizes `model` to int8 and returns the int8 outputs and quantized layers' paths."""
    float_out = keras.ops.convert_to_numpy(model(inputs))
    model.quantize("int8")
    quantized = [layer.path for layer in model._flatten_layers() if layer.quantization_mode == "int8"]
    assert any("channel_projection_u" in path for path in quantized), quantized
    assert any("channel_projection_v" in path for path in quantized), quantized
    assert any("tiny_attention/qkv" in path for path in quantized), quantized
    int8_out = keras.ops.convert_to_numpy(model(inputs))
    error = _relative_error(int8_out, float_out)
    assert 0 < error < 0.02, f"int8 outputs differ from float32 by {error:.3g} (relative)"
    return int8_out, quantized


def _assert_quantized_close_and_round_trips(model, inputs, tmp_path):
    int8_out, quantized = _assert_quantized_close(model, inputs)
    path = os.path.join(tmp_path, "int8.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert [layer.path for layer in restored._flatten_layers() if layer.quantization_mode == "int8"] == quantized
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(inputs)), int8_out)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_int8_block_model_is_close_to_float32_and_round_trips(rng, tmp_path, causal):
    inputs = keras.Input((N, D))
    x = GMLPBlock(D, FFN, N, tiny_attention_dim=16, causal=causal, name="block_0")(inputs)
    x = GMLPBlock(D, FFN, N, tiny_attention_dim=16, causal=causal, name="block_1")(x)
    model = keras.Model(inputs, x)
    for variable in model.weights:
        if "spatial_kernel" in variable.path:  # far from W ~ 0, so the token mixing counts
            variable.assign(rng.normal(0, N**-0.5, variable.shape).astype("float32"))
    _assert_quantized_close_and_round_trips(model, rng.normal(size=(4, N, D)).astype("float32"), tmp_path)


def test_int8_text_backbone_is_close_to_float32_and_round_trips(rng, tmp_path):
    # keras-hub's Backbone.get_config carries the quantized layers' policies (a DTypePolicyMap)
    # and the blocks pass them on to their sub-layers, so the reloaded backbone is int8 too.
    backbone = GMLPBackbone(vocabulary_size=100, num_layers=2, hidden_dim=D, ffn_dim=FFN,
                            sequence_length=N, tiny_attention_dim=16)
    ids = rng.integers(1, 100, (4, N)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    _assert_quantized_close_and_round_trips(backbone, {"token_ids": ids, "padding_mask": mask},
                                            tmp_path)
