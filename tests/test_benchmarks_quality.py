"""`python -m benchmarks.quality --quick` runs end to end on small generated files in the real
sets' formats (IDX files, TOPIC/*.txt articles), so CI needs neither package."""

import json
import os
import subprocess
import sys

import numpy as np
from test_data_real import _write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_quality_benchmark_runs_and_matches_parameter_counts(tmp_path):
    rng = np.random.default_rng(0)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for prefix, count in (("train", 64), ("t10k", 32)):
        _write_split(fashion, prefix, rng.integers(0, 256, (count, 28, 28), np.uint8), np.arange(count) % 10)
    words = [f"w{i}" for i in range(60)]
    for topic in ("business", "sport", "tech"):
        (tmp_path / "bbc" / topic).mkdir(parents=True)
        for i in range(8):
            text = " ".join(rng.choice(words, 80))
            (tmp_path / "bbc" / topic / f"{i}.txt").write_text(f"{topic} {text}")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--quick", f"--fashion_mnist_dir={fashion}",
         f"--bbc_dir={tmp_path / 'bbc'}", f"--output_dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {(r["section"], r["model"]): r for r in json.loads((out / "quality.json").read_text())["rows"]}
    assert set(rows) == {("image", m) for m in ("gmlp", "amlp", "vit")} | {
        ("text", m) for m in ("gmlp", "amlp", "bert", "multiplicative", "additive", "linear", "mixer")}
    for (section, model), row in rows.items():
        metric = row["top1"] if section == "image" else row["perplexity"]
        assert np.isfinite(metric) and np.isfinite(row["train_loss"]), row
    # The Transformers are sized to gMLP's parameter count (widths are whole numbers).
    for section, peer in (("image", "vit"), ("text", "bert")):
        ours, theirs = rows[(section, "gmlp")]["params"], rows[(section, peer)]["params"]
        assert abs(theirs - ours) / ours < 0.05, (section, ours, theirs)
    assert rows[("image", "gmlp")]["examples"] == 32
    assert "| mixer |" in (out / "quality.md").read_text() and (out / "quality.png").stat().st_size > 0
