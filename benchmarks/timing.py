"""Wall-clock timing of compiled steps, and a description of the machine they ran on."""

import os
import platform
import statistics
import time


def block_until_ready(result):
    """Forces every tensor in `result` to be computed (TF and torch are asynchronous)."""
    if type(result).__module__.startswith("torch"):
        return  # eager PyTorch on CPU has finished when the call returns
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        if type(value).__module__.startswith("torch"):
            continue  # eager PyTorch on CPU has finished when the call returns
        if hasattr(value, "numpy"):
            value.numpy()
        elif hasattr(value, "item"):
            value.item()


def measure(step, *args, warmup=1, steps=3):
    """Times `step(*args)`; the first `warmup` calls (tracing, compilation) are excluded.

    Returns a dict with the median and minimum step time in seconds, every
    timed step, and the time of the first call (which includes tracing).
    The median is the headline number; the minimum is kept because the
    machine may be shared, and contention only ever adds time.
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"`warmup` and `steps` must be >= 1, got warmup={warmup}, steps={steps}.")
    start = time.perf_counter()
    block_until_ready(step(*args))
    first_call_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        block_until_ready(step(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "first_call_s": first_call_s,
    }


def load_average():
    """The 1, 5 and 15 minute load averages (the `uptime` numbers), or None off Unix."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def system_info():
    """Versions and machine facts recorded next to every result."""
    import keras
    import tensorflow as tf

    info = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average": load_average(),
        "onednn_enabled_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }
    try:
        import keras_hub

        info["keras_hub"] = keras_hub.__version__
    except ImportError:
        pass
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
