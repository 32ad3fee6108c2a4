"""The machine's matmul ceiling: the reference for model FLOPs utilisation."""

import tensorflow as tf

from benchmarks.timing import measure


def matmul_gflops(size, dtype, warmup=2, steps=5):
    """GFLOP/s of a compiled `(size, size) @ (size, size)` TensorFlow matmul in `dtype`."""
    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    matmul = tf.function(tf.linalg.matmul)
    timing = measure(matmul, a, b, warmup=warmup, steps=steps)
    flops = 2 * size**3
    return {
        "size": size,
        "dtype": dtype,
        "gflops_median": flops / timing["median_s"] / 1e9,
        "gflops_best": flops / timing["min_s"] / 1e9,
        **timing,
    }


def matmul_ceiling(sizes, dtypes=("float32", "bfloat16"), warmup=2, steps=5):
    """Per dtype, the best median GFLOP/s over `sizes`, plus every measurement."""
    results = {}
    for dtype in dtypes:
        runs = [matmul_gflops(size, dtype, warmup, steps) for size in sizes]
        best = max(runs, key=lambda run: run["gflops_median"])
        results[dtype] = {"gflops": best["gflops_median"], "size": best["size"], "runs": runs}
    return results
