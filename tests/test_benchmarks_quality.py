"""`python -m benchmarks.quality --quick` runs end to end on small generated files in the real
sets' formats (IDX files, TOPIC/*.txt articles), so CI needs neither package; and the report's
statistics and ranking rule against hand-computed values."""

import json
import math
import os
import subprocess
import sys

import numpy as np
from test_data_real import _write_split

from benchmarks import quality_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_bbc(root, rng):
    """Articles whose words follow a fixed cycle from a random start: context predicts them."""
    words = [f"w{i}" for i in range(40)]
    for topic in ("business", "sport", "tech"):
        (root / topic).mkdir(parents=True)
        for i in range(8):
            start = int(rng.integers(len(words)))
            text = " ".join(words[(start + j) % len(words)] for j in range(80))
            (root / topic / f"{i}.txt").write_text(f"{topic} {text}")


def test_quick_quality_benchmark_rows_schema_and_parameter_matching(tmp_path):
    rng = np.random.default_rng(0)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for prefix, count in (("train", 64), ("t10k", 32)):
        _write_split(fashion, prefix, rng.integers(0, 256, (count, 28, 28), np.uint8), np.arange(count) % 10)
    _write_bbc(tmp_path / "bbc", rng)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--quick", "--seeds=0", f"--fashion_mnist_dir={fashion}",
         f"--bbc_dir={tmp_path / 'bbc'}", f"--output_dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "quality.json").read_text())
    rows = {(r["section"], r["model"], r["seed"]): r for r in report["rows"]}
    text_models = ("gmlp", "gmlp_large", "bert")
    expected = {("mlm", "unigram", None)} | {
        (section, model, seed) for seed in (0,) for section, models in (
            ("mlm", text_models),
            ("finetune", [f"{m}_{init}" for m in text_models for init in ("pretrained", "scratch")]),
            ("image", ("gmlp", "vit", "mixer")),
            ("ablation", ("split", "multiplicative", "additive", "linear", "mixer")))
        for model in models}
    assert set(rows) == expected
    for (section, model, seed), row in rows.items():
        metric = "ppl" if section in ("mlm", "ablation") else "top1"
        assert {"section", "model", "seed", metric, "params", "train_s"} <= set(row), row
        assert np.isfinite(row[metric]) and row["params"] > 0 and row["train_s"] >= 0, row
        if model != "unigram":
            # The last point of the learning curve is the reported metric.
            assert row["curve"][-1] == [row["steps"], row[metric]], row
    # The Transformers and the Mixer are sized to gMLP's parameter count (whole-number widths).
    for section, ours, peer in (("image", "gmlp", "vit"), ("image", "gmlp", "mixer"), ("mlm", "gmlp", "bert")):
        a, b = rows[(section, ours, 0)]["params"], rows[(section, peer, 0)]["params"]
        assert abs(a - b) / a < 0.05, (section, peer, a, b)
    # At the mlm section's steps the ablation's split design is the mlm section's gmlp run.
    split, gmlp = rows[("ablation", "split", 0)], rows[("mlm", "gmlp", 0)]
    assert split["ppl"] == gmlp["ppl"] and split["curve"] == gmlp["curve"] and "mlm" in split["note"]
    # The larger gMLP is larger.
    assert rows[("mlm", "gmlp_large", 0)]["params"] > 1.5 * rows[("mlm", "gmlp", 0)]["params"]
    # The unigram baseline is the training frequencies' perplexity: at most the vocabulary size.
    assert 1 < rows[("mlm", "unigram", None)]["ppl"] <= rows[("mlm", "unigram", None)]["params"]
    assert set(report["sections"]) == {"mlm", "finetune", "image", "ablation"}
    assert all(s["wall_s"] > 0 for s in report["sections"].values())
    md = (out / "quality.md").read_text()
    assert "| gmlp_large_pretrained |" in md and "| mixer |" in md and (out / "quality.png").stat().st_size > 0



def test_a_run_of_some_sections_replaces_their_rows_and_keeps_the_others():
    from benchmarks import quality

    old = _rows("image", "gmlp", [0.8, 0.9]) + _rows("mlm", "gmlp", [50.0]) + _rows("ablation", "split", [60.0])
    new = _rows("mlm", "gmlp", [40.0, 41.0, 42.0])
    merged = quality.merge_rows(old, new)
    assert [(r["section"], r["ppl"] if "ppl" in r else r["top1"]) for r in merged] == [
        ("mlm", 40.0), ("mlm", 41.0), ("mlm", 42.0), ("image", 0.8), ("image", 0.9), ("ablation", 60.0)]


def _rows(section, model, values):
    metric = "ppl" if section in ("mlm", "ablation") else "top1"
    return [dict(section=section, model=model, seed=i, params=1, train_s=1.0, **{metric: v})
            for i, v in enumerate(values)]


def test_summary_is_mean_and_sample_std_and_ranking_uses_two_pooled_std():
    rows = _rows("image", "gmlp", [0.90, 0.91, 0.92]) + _rows("image", "vit", [0.80, 0.82, 0.84]) + _rows(
        "image", "mixer", [0.89, 0.90, 0.91])
    summary = {s["model"]: s for s in quality_report.summarize(rows)["image"]}
    assert math.isclose(summary["gmlp"]["mean"], 0.91) and math.isclose(summary["gmlp"]["std"], 0.01)
    assert math.isclose(summary["vit"]["std"], 0.02)
    sentences = quality_report.rankings(quality_report.summarize(rows))["image"]
    # gmlp - vit = 0.09 > 2 * sqrt((0.01^2 + 0.02^2) / 2) = 0.0316: ranked.
    assert sentences[0].startswith("gmlp is better than vit")
    # gmlp - mixer = 0.01 < 2 * 0.01: not ranked.
    assert "within noise" in sentences[1]
    # One run has no spread: no ranking.
    one = quality_report.summarize(_rows("image", "gmlp", [0.9]) + _rows("image", "vit", [0.1]))
    assert "not ranked" in quality_report.rankings(one)["image"][0]
    # Lower is better for perplexity.
    rows = _rows("mlm", "gmlp", [10.0, 10.5, 11.0]) + _rows("mlm", "bert", [20.0, 20.5, 21.0])
    assert quality_report.rankings(quality_report.summarize(rows))["mlm"][0].startswith("gmlp is better than bert")
