"""How the Spatial Gating Unit's cost grows with sequence length n.

The token-mixing product costs n^2 * d_ffn/2 multiply-adds per example and its
weight is (n, n); the rest (the gate's LayerNorm, the gating product) grows
linearly. Times are of a compiled forward+backward pass of keras_gmlp's
`SpatialGatingUnit` (gradients for the input and the weights). Memory is
TensorFlow's own allocator statistics for the CPU device
(`tf.config.experimental.get_memory_info("CPU:0")`): the peak bytes allocated
during one step above what was allocated before it (inputs and weights).
"""

import keras
import tensorflow as tf

from benchmarks import flops
from benchmarks.common import release
from benchmarks.timing import measure
from keras_gmlp.layers import SpatialGatingUnit


def _peak_step_bytes(step):
    device = "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        step()
        return tf.config.experimental.get_memory_info(device)["peak"] - before
    except (ValueError, RuntimeError):
        return None


def run(lengths, ffn_dim, batch, warmup, steps, log=print):
    """Forward+backward time and peak memory of one SGU at every length in `lengths`."""
    rows = []
    for n in lengths:
        release()
        layer = SpatialGatingUnit(n)
        x = tf.random.stateless_normal((batch, n, ffn_dim), (0, n))
        layer.build(x.shape)
        variables = layer.trainable_variables

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.square(y))
            return tape.gradient(loss, [x] + variables)

        timing = measure(lambda: step(x), warmup=warmup, steps=steps)
        peak = _peak_step_bytes(lambda: [g.numpy() for g in step(x)])
        row = {
            "section": "scaling",
            "sequence_length": n,
            "ffn_dim": ffn_dim,
            "batch": batch,
            "step_ms": 1e3 * timing["median_s"],
            "step_ms_min": 1e3 * timing["min_s"],
            "step_times_s": timing["times_s"],
            "train_flops": flops.training(flops.sgu_forward(batch, n, ffn_dim)),
            "peak_step_bytes": peak,
            "spatial_weight_bytes": 4 * n * n,
        }
        log(row)
        rows.append(row)
        del layer, step
    base = rows[0]
    for row in rows:
        scale = (row["sequence_length"] / base["sequence_length"]) ** 2
        row["n2_ratio"] = scale
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
        row["predicted_ms_n2"] = base["step_ms"] * scale
        if row["peak_step_bytes"] and base["peak_step_bytes"]:
            row["memory_ratio"] = row["peak_step_bytes"] / base["peak_step_bytes"]
        row["gflops"] = row["train_flops"] / (row["step_ms"] / 1e3) / 1e9
    keras.backend.clear_session()
    return rows
