"""benchmarks/long_context.py: its crossover rules and which cases it starts."""

from benchmarks import long_context


def _projection_rows(times):
    return [{"n": n, "method": m, "step_ms": t} for n, pair in times.items() for m, t in zip(("dense", "fft"), pair)]


def test_crossover_is_where_the_fft_stays_faster():
    rows = _projection_rows({64: (1, 2), 128: (2, 1), 256: (3, 4), 512: (8, 4), 1024: (30, 9)})
    assert long_context.crossover_length(rows) == 512  # 128 was a blip: 256 is dense again
    assert long_context.crossover_length(_projection_rows({64: (1, 2), 128: (2, 3)})) is None


def test_block_crossover_counts_a_model_that_stopped_as_slower():
    rows = [
        {"model": "toeplitz_gmlp", "n": 128, "status": "ok", "step_ms": 5},
        {"model": "dense_gmlp", "n": 128, "status": "ok", "step_ms": 4},
        {"model": "transformer", "n": 128, "status": "ok", "step_ms": 3},
        {"model": "toeplitz_gmlp", "n": 512, "status": "ok", "step_ms": 6},
        {"model": "dense_gmlp", "n": 512, "status": "ok", "step_ms": 9},
        {"model": "transformer", "n": 512, "status": "over memory cap"},
    ]
    crossovers = long_context.block_crossovers(rows)
    assert crossovers["toeplitz_gmlp faster than dense_gmlp from n"] == 512
    assert crossovers["toeplitz_gmlp faster than transformer from n"] == 512
    assert crossovers["dense_gmlp faster than transformer from n"] == 512


def test_dense_gmlp_is_not_started_where_its_w_alone_passes_the_cap():
    assert long_context.predicted_bytes("dense_gmlp", 32768, 1, 128, 768) > 4 * long_context.GIB
    assert long_context.predicted_bytes("dense_gmlp", 8192, 1, 128, 768) < 4 * long_context.GIB
    assert long_context.predicted_bytes("toeplitz_gmlp", 65536, 1, 128, 768) == 0


def test_quick_quality_run_evaluates_toeplitz_past_its_training_length(tmp_path):
    import json

    import numpy as np

    from benchmarks import long_context_quality

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    for topic in ("business", "sport"):
        (tmp_path / "bbc" / topic).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "bbc" / topic / f"{i}.txt").write_text(f"{topic} " + " ".join(rng.choice(words, 120)))
    long_context_quality.main(["--quick", "--bbc_dir", str(tmp_path / "bbc"), "--output-dir", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "long_context_quality.json").read_text())
    extrapolation = {(r["model"], r["eval_length"]): r["perplexity"] for r in result["rows"]
                     if r["section"] == "extrapolation"}
    # Toeplitz at 16 (trained), 32 and 64; dense only where it has weights.
    assert sorted(extrapolation) == [("dense_gmlp", 16), ("toeplitz_gmlp", 16), ("toeplitz_gmlp", 32),
                                     ("toeplitz_gmlp", 64)]
    assert all(np.isfinite(p) and p > 1 for p in extrapolation.values())
    assert {r["model"] for r in result["rows"] if r["section"] == "quality"} == {"dense_gmlp", "toeplitz_gmlp"}
    assert "no weights" in (tmp_path / "out" / "long_context_quality.md").read_text()
