"""spatial_projection="toeplitz" through SpatialGatingUnit, GMLPBlock, the backbones and the
trainers' --model_overrides, against the NumPy reference; "dense" stays the default."""

import keras
import numpy as np
import pytest
from absl import flags

import numpy_reference as ref
from keras_gmlp.layers import GMLPBlock
from keras_gmlp.layers import SpatialGatingUnit
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPVisionBackbone
from trainers import pretrain_mlm

D, FFN, N = 8, 16, 8


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def load_projection(projection, rng, decay):
    """Unit-scale random weights in a ToeplitzProjection; returns its NumPy t(k) and b."""
    kernels, biases = [], []
    for i in range(3):
        kernel, bias = getattr(projection, f"rpe_kernel_{i}"), getattr(projection, f"rpe_bias_{i}")
        kernels.append(rng.normal(0, kernel.shape[0] ** -0.5, kernel.shape).astype("float32"))
        biases.append(rng.normal(0, 0.3, bias.shape).astype("float32"))
        kernel.assign(kernels[-1])
        bias.assign(biases[-1])
    b = rng.normal(1, 0.1, projection.bias.shape).astype("float32")
    projection.bias.assign(b)
    t = ref.toeplitz_rpe_coefficient(kernels, biases, decay, projection.num_heads, projection.causal)
    return t, b


def make_block(rng, causal=False, n=N):
    block = GMLPBlock(D, FFN, n, causal=causal, spatial_projection="toeplitz")
    block.build((None, n, D))
    p = ref.random_block_params(rng, D, FFN, n)
    half = FFN // 2
    block.norm.gamma.assign(p["norm_gamma"])
    block.norm.beta.assign(p["norm_beta"])
    block.channel_projection_u.kernel.assign(p["w1"][:, :half])
    block.channel_projection_u.bias.assign(p["b1"][:half])
    block.channel_projection_v.kernel.assign(p["w1"][:, half:])
    block.channel_projection_v.bias.assign(p["b1"][half:])
    sgu = block.spatial_gating_unit
    sgu.norm.gamma.assign(p["gate_gamma"])
    sgu.norm.beta.assign(p["gate_beta"])
    block.channel_projection_out.kernel.assign(p["w2"])
    block.channel_projection_out.bias.assign(p["b2"])
    t, b = load_projection(sgu.toeplitz_projection, rng, sgu.toeplitz_projection.decay)
    return block, p, t, b


def padding_mask(lengths, n):
    return (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype("int32")


@pytest.mark.parametrize("pair", [False, True])
def test_sgu_matches_numpy(rng, pair):
    sgu = SpatialGatingUnit(N, spatial_projection="toeplitz")
    x = rng.normal(size=(2, 3 * N, FFN)).astype("float32")  # 3 times the built length
    sgu.build((None, N, FFN))
    gamma, beta = rng.uniform(0.5, 1.5, FFN // 2), rng.normal(0, 0.1, FFN // 2)
    sgu.norm.gamma.assign(gamma)
    sgu.norm.beta.assign(beta)
    t, b = load_projection(sgu.toeplitz_projection, rng, 0.99)
    mask = padding_mask([3 * N, 5], 3 * N)
    attention = rng.normal(size=(2, 3 * N, FFN // 2)).astype("float32")
    expected = ref.toeplitz_spatial_gating_unit(x, t, b, gamma, beta, mask=mask, attention=attention)
    inputs = list(np.split(x, 2, axis=-1)) if pair else x
    got = numpy(sgu(inputs, padding_mask=mask, attention=attention))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not hasattr(sgu, "spatial_kernel")  # no (n, n) weights


@pytest.mark.parametrize("n", [N, 5 * N])
def test_block_matches_numpy_at_and_past_the_built_length(rng, n):
    block, p, t, b = make_block(rng)
    x = rng.normal(size=(2, n, D)).astype("float32")
    mask = padding_mask([n, n // 2], n)
    expected = ref.toeplitz_gmlp_block(x, p, t, b, mask=mask)
    np.testing.assert_allclose(numpy(block(x, padding_mask=mask)), expected, rtol=1e-4, atol=1e-4)


def test_block_starts_as_the_dense_blocks_feed_forward_network(rng):
    keras.utils.set_random_seed(3)
    toeplitz = GMLPBlock(D, FFN, N, spatial_projection="toeplitz")
    dense = GMLPBlock(D, FFN, N)
    x = rng.normal(size=(2, N, D)).astype("float32")
    toeplitz(x), dense(x)
    for name in ("norm", "channel_projection_u", "channel_projection_v", "channel_projection_out"):
        getattr(toeplitz, name).set_weights(getattr(dense, name).get_weights())
    np.testing.assert_allclose(numpy(toeplitz(x)), numpy(dense(x)), rtol=1e-4, atol=1e-4)


def test_dense_stays_the_default_and_rejects_longer_inputs():
    block = GMLPBlock(D, FFN, N)
    assert block.get_config()["spatial_projection"] == "dense"
    assert SpatialGatingUnit(N).get_config()["spatial_projection"] == "dense"
    with pytest.raises(ValueError, match="at most sequence_length=8"):
        block(np.zeros((1, N + 1, D), "float32"))


def test_bad_spatial_projection_raises():
    expected = r"`spatial_projection`='circulant': expected one of \('dense', 'toeplitz'\)"
    with pytest.raises(ValueError, match=expected):
        SpatialGatingUnit(N, spatial_projection="circulant")
    with pytest.raises(ValueError, match=expected):
        GMLPBlock(D, FFN, N, spatial_projection="circulant")
    with pytest.raises(ValueError, match=expected):
        GMLPBackbone.validate_arguments(vocabulary_size=10, num_layers=1, hidden_dim=D, ffn_dim=FFN,
                                        sequence_length=N, spatial_projection="circulant")


def _backbone(causal=False):
    return GMLPBackbone(vocabulary_size=50, num_layers=2, hidden_dim=D, ffn_dim=FFN, sequence_length=N,
                        causal=causal, spatial_projection="toeplitz")


def _perturb(backbone, rng):
    for weight in backbone.weights:  # away from the identity gate, so the mixing is exercised
        weight.assign(numpy(weight) + 0.3 * rng.normal(size=weight.shape).astype("float32"))


def test_backbone_reads_longer_inputs_and_padding_leaks_nothing(rng):
    backbone = _backbone()
    _perturb(backbone, rng)
    n = 4 * N
    mask = padding_mask([n, 11], n)
    ids = rng.integers(1, 50, size=(2, n)).astype("int32") * mask
    changed = np.where(mask == 1, ids, rng.integers(1, 50, size=ids.shape)).astype("int32")
    a = numpy(backbone({"token_ids": ids, "padding_mask": mask}))
    b = numpy(backbone({"token_ids": changed, "padding_mask": mask}))
    real = mask.astype(bool)
    np.testing.assert_allclose(a[real], b[real], rtol=0, atol=1e-5)
    leaky = numpy(backbone({"token_ids": changed, "padding_mask": np.ones_like(mask)}))
    assert not np.allclose(leaky[real], a[real], atol=1e-3)


def test_causal_backbone_ignores_later_tokens(rng):
    backbone = _backbone(causal=True)
    _perturb(backbone, rng)
    n, j = 3 * N, 10
    ids = rng.integers(1, 50, size=(1, n)).astype("int32")
    changed = ids.copy()
    changed[0, j:] = (changed[0, j:] % 49) + 1
    ones = np.ones_like(ids)
    a = numpy(backbone({"token_ids": ids, "padding_mask": ones}))
    b = numpy(backbone({"token_ids": changed, "padding_mask": ones}))
    np.testing.assert_allclose(a[:, :j], b[:, :j], rtol=0, atol=1e-5)
    assert not np.allclose(a[:, j:], b[:, j:], atol=1e-3)


def test_backbone_keras_file_and_preset_round_trips(rng, tmp_path):
    backbone = _backbone()
    _perturb(backbone, rng)
    ids = rng.integers(1, 50, size=(2, 20)).astype("int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    expected = numpy(backbone(inputs))
    assert backbone.get_config()["spatial_projection"] == "toeplitz"
    backbone.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.spatial_projection == "toeplitz"
    np.testing.assert_array_equal(numpy(restored(inputs)), expected)
    backbone.save_to_preset(str(tmp_path / "preset"))
    from_preset = GMLPBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(numpy(from_preset(inputs)), expected)


def test_vision_backbone_takes_the_mode(rng):
    kwargs = dict(image_shape=(8, 8, 3), patch_size=2, num_layers=1, hidden_dim=D, ffn_dim=FFN)
    backbone = GMLPVisionBackbone(spatial_projection="toeplitz", **kwargs)
    assert backbone.get_config()["spatial_projection"] == "toeplitz"
    images = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    assert backbone(images).shape[0] == 2
    assert GMLPVisionBackbone(**kwargs).spatial_projection == "dense"


def test_mixed_bfloat16_block_is_close_to_float32(rng):
    block, _, _, _ = make_block(rng)
    x = rng.normal(size=(2, 600, D)).astype("float32")  # past the FFT crossover
    expected = numpy(block(x))
    mixed = GMLPBlock.from_config({**block.get_config(), "dtype": "mixed_bfloat16"})
    mixed.build(x.shape)
    mixed.set_weights(block.get_weights())
    out = numpy(keras.ops.cast(mixed(x), "float32"))
    np.testing.assert_allclose(out, expected, rtol=0, atol=0.05 * np.abs(expected).max())


def test_trainers_accept_the_override(tmp_path):
    def parse(override):
        fv = flags.FlagValues()
        pretrain_mlm.define_flags(fv)
        fv(["trainer", f"--model_dir={tmp_path}", f"--model_overrides={override}"])

    parse("spatial_projection=toeplitz")
    with pytest.raises(flags.IllegalFlagValueError, match="`spatial_projection`='circular'"):
        parse("spatial_projection=circular")
