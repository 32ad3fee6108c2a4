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
