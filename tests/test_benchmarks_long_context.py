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
