"""The benchmark harness runs end to end (tiny sizes) and its FLOP counts match the paper's."""

import json
import math

import pytest

from benchmarks import flops
from benchmarks import run


def test_flop_count_matches_timms_macs_for_gmlp_s16():
    # timm reports 4.42 GMACs for gmlp_s16_224; forward FLOPs are 2 x MACs.
    macs = flops.gmlp_vision_forward(1, 224, 16, 30, 256, 1536, 1000) / 2
    assert macs == pytest.approx(4.42e9, rel=0.01)


def test_quick_run_writes_a_finite_table_json_and_chart(tmp_path):
    run.main(["--quick", "--sections", "ceiling,vision,scaling", "--vision-models", "gMLP-S/16",
              "--policies", "float32", "--output-dir", str(tmp_path)])
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert (tmp_path / "benchmark.md").stat().st_size > 0
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    assert result["rows"] and result["scaling"]
    for row in result["rows"]:
        assert math.isfinite(row["throughput"]) and row["throughput"] > 0
    assert all(value > 0 for value in result["ceiling"].values() if isinstance(value, (int, float)))


@pytest.mark.parametrize("change", ["defaults", "split", "plain_sgu"])
def test_variants_functional_copy_computes_the_gmlp_block(change):
    # The variants table times copies of the block built from keras_gmlp.kernels' public
    # functions; each must compute what GMLPBlock computes, or its row measures something else.
    import numpy as np
    import tensorflow as tf

    from benchmarks import variants
    from keras_gmlp.layers import GMLPBlock

    n, d, f = 6, 8, 16
    weights = variants._weights(1, n, d, f, seed=1)[0]
    block = GMLPBlock(d, f, n)
    block.build((None, n, d))
    sgu = block.spatial_gating_unit
    for variable, key in [(block.norm.gamma, "norm_gamma"), (block.norm.beta, "norm_beta"),
                          (sgu.norm.gamma, "gate_gamma"), (sgu.norm.beta, "gate_beta"),
                          (sgu.spatial_kernel, "spatial_kernel"), (sgu.spatial_bias, "spatial_bias"),
                          (block.channel_projection_out.kernel, "out_kernel"),
                          (block.channel_projection_out.bias, "out_bias")]:
        weights[key].assign(np.random.default_rng(len(key)).normal(0.5, 0.5, variable.shape))
        variable.assign(weights[key])
    # The copy's one (d, f) first projection holds the block's u columns, then its v columns.
    for key, axis in (("in_kernel", -1), ("in_bias", 0)):
        weights[key].assign(np.random.default_rng(len(key)).normal(0.5, 0.5, weights[key].shape))
        u, v = np.split(weights[key].numpy(), 2, axis=axis)
        getattr(block.channel_projection_u, key[3:]).assign(u)
        getattr(block.channel_projection_v, key[3:]).assign(v)
    options = dict(variants.DEFAULTS, **{"defaults": {}, "split": variants.SPLIT,
                                         "plain_sgu": variants.PLAIN_SGU}[change])
    x = tf.random.stateless_normal((2, n, d), (1, 2))
    np.testing.assert_allclose(variants._block(x, weights, options, "float32"), block(x), rtol=1e-4, atol=1e-4)
