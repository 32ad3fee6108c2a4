"""Shared pieces of the benchmark sections: result rows, their log line, model lifetimes.

Keras (and so TensorFlow) is imported only by the functions that need it: the
PyTorch section runs in a process of its own that never loads TensorFlow.
"""

import gc


def result_row(section, model, framework, policy, batch, mode, step, flops_per_step, items_per_step,
               unit, ceiling, params=None, jit_compile=None, extra=None):
    """One table row: throughput, achieved GFLOP/s and MFU against the same dtype's ceiling."""
    median_s = step["median_s"]
    gflops = flops_per_step / median_s / 1e9
    ceiling_dtype = "bfloat16" if "bfloat16" in policy else "float32"
    ceiling_gflops = (ceiling or {}).get(ceiling_dtype, {}).get("gflops")
    row = {
        "section": section,
        "model": model,
        "framework": framework,
        "policy": policy,
        "batch": batch,
        "mode": mode,
        "unit": unit,
        "throughput": items_per_step / median_s,
        "throughput_best": items_per_step / step["min_s"],
        "step_ms": 1e3 * median_s,
        "step_ms_min": 1e3 * step["min_s"],
        "step_times_s": step["times_s"],
        "first_call_s": step["first_call_s"],
        "flops_per_step": flops_per_step,
        "gflops": gflops,
        "mfu": gflops / ceiling_gflops if ceiling_gflops else None,
        "ceiling_dtype": ceiling_dtype,
        "params": params,
        "jit_compile": jit_compile,
    }
    row.update(extra or {})
    return row


def log_row(row):
    """Prints one result row as a progress line."""
    if "throughput" in row:
        mfu = "" if row["mfu"] is None else f"  MFU {100 * row['mfu']:.0f}%"
        print(f"  {row['model']:20s} {row['framework']:22s} {row['policy']:15s} b{row['batch']:<3d} "
              f"{row['mode']:5s} {row['throughput']:9.1f} {row['unit']:9s} "
              f"{row['step_ms']:8.0f} ms  {row['gflops']:6.0f} GFLOP/s{mfu}", flush=True)
    else:
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items() if not isinstance(v, list)), flush=True)


def use_policy(policy):
    """Sets Keras' global dtype policy and drops state of earlier models."""
    import keras

    keras.backend.clear_session()
    gc.collect()
    keras.config.set_dtype_policy(policy)


def release():
    """Frees the current models' graphs before building the next ones."""
    import keras

    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    gc.collect()
