"""Shared pieces of the benchmark sections: result rows and model-lifetime handling."""

import gc

import keras


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


def use_policy(policy):
    """Sets Keras' global dtype policy and drops state of earlier models."""
    keras.backend.clear_session()
    gc.collect()
    keras.config.set_dtype_policy(policy)


def release():
    """Frees the current models' graphs before building the next ones."""
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    gc.collect()
