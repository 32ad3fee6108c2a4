"""Long inputs: dense gMLP, Toeplitz gMLP and a Transformer block against sequence length.

`python -m benchmarks.long_context` (add `--quick` for tiny sizes) prints a table and writes
`long_context.{json,md,png}` to `--output-dir` (default `benchmarks/results/`). Sections:

- `parameterization`: candidate forms of the Toeplitz coefficients `t(k)` fitted to a target
  kernel on the offsets of 64 tokens, then read back on the offsets of up to 1,024 (and
  65,536 for boundedness): how each extends past the trained range.
- `crossover`: forward+backward of `ToeplitzProjection` by dense Toeplitz matmul and by FFT
  against n; the crossover is the first length from which the FFT stays faster.
- `blocks`: forward+backward time and peak memory of ONE block (dense gMLP `GMLPBlock`,
  Toeplitz gMLP, keras-hub `TransformerEncoder` of the same width) for n = 128 ... 65,536.
- `backbone`: a 2-block Toeplitz text backbone at n = 65,536, one forward+backward step.

Every timed case runs in a child process of its own, watched by this one: it is killed once
its resident memory passes `--memory-cap-gib` or it runs past `--case-timeout-s`, and a
series stops at its first such case (longer inputs only need more). Cases whose weights and
n^2 temporaries alone would pass the cap are not started (recorded as predicted over the cap).
The block series of one model run in one child, one length after another; a case's peak
memory is the highest resident set the watcher sampled (every 50 ms) during it minus the
resident set it started from: what building, tracing and stepping it added on top of
TensorFlow. Single cases (crossover, backbone) report their `ru_maxrss` minus the resident set
before their first step.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

GIB = 1024**3
LENGTHS = (128, 512, 2048, 8192, 16384, 32768, 65536)
CROSSOVER_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
MODELS = ("dense_gmlp", "toeplitz_gmlp", "transformer")
TARGETS = {
    # A local kernel, like the learned W of the paper's MLM models, different on each side.
    "local": lambda k: math.exp(-abs(k) / 8) * (math.cos(k / 3) if k >= 0 else 0.6),
    # A long, power-law kernel: what a fixed decay of 0.99 cannot follow past ~500 tokens.
    "long": lambda k: 1.0 / (1.0 + abs(k) / 16),
}
FIT_LENGTH = 64


# --- child side: each function runs in its own process and returns a JSON-able dict ---


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(case):
    import keras_hub

    from keras_gmlp.layers import GMLPBlock
    from keras_gmlp.layers import ToeplitzProjection

    n, d, f = case["n"], case["hidden_dim"], case["ffn_dim"]
    kind = case["kind"]
    if kind == "projection":
        return ToeplitzProjection(method=case["method"]), (case["batch"], n, f // 2), "ToeplitzProjection"
    if case["model"] == "dense_gmlp":
        return GMLPBlock(d, f, n), (case["batch"], n, d), "GMLPBlock"
    if case["model"] == "toeplitz_gmlp":
        return (GMLPBlock(d, f, n, spatial_projection="toeplitz"), (case["batch"], n, d),
                "GMLPBlock(spatial_projection='toeplitz')")
    heads = max(1, d // 64)
    return (keras_hub.layers.TransformerEncoder(f, heads, dropout=0.0), (case["batch"], n, d),
            f"keras_hub TransformerEncoder ({heads} heads)")


def _time_layer(case):
    import tensorflow as tf

    from benchmarks.timing import measure

    layer, shape, name = _build(case)
    x = tf.random.stateless_normal(shape, (0, case["n"]))
    layer(x[:, : min(8, case["n"])])  # builds the weights (every layer here takes shorter inputs)
    variables = layer.trainable_variables

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x] + variables)

    before = _rss_bytes()
    timing = measure(lambda: step(x), warmup=1, steps=case["steps"])
    return {"implementation": name, "step_ms": 1e3 * timing["median_s"], "step_ms_min": 1e3 * timing["min_s"],
            "first_call_s": timing["first_call_s"], "step_times_s": timing["times_s"],
            "params": int(sum(math.prod(v.shape) for v in variables)),
            "peak_step_bytes": _peak_rss_bytes() - before, "peak_rss_bytes": _peak_rss_bytes()}


def _time_backbone(case):
    import tensorflow as tf

    from benchmarks.timing import measure
    from keras_gmlp.models import GMLPBackbone

    n, batch = case["n"], case["batch"]
    kwargs = dict(vocabulary_size=1000, num_layers=2, hidden_dim=case["hidden_dim"],
                  ffn_dim=case["ffn_dim"], sequence_length=n)
    model = GMLPBackbone(spatial_projection="toeplitz", **kwargs)
    name = "GMLPBackbone(spatial_projection='toeplitz')"
    ids = tf.random.stateless_uniform((batch, n), (1, 2), 1, 1000, dtype="int32")
    inputs = {"token_ids": ids, "padding_mask": tf.ones_like(ids)}
    variables = model.trainable_variables

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(inputs)))
        return tape.gradient(loss, variables)

    before = _rss_bytes()
    timing = measure(lambda: step(inputs), warmup=1, steps=case["steps"])
    # CPU seconds of one more step, all threads: on a shared machine the wall time counts the
    # other processes' turns too, the process's CPU time does not.
    from benchmarks.timing import block_until_ready

    cpu = time.process_time()
    block_until_ready(step(inputs))
    cpu_s = time.process_time() - cpu
    return {"implementation": name, "step_cpu_s": cpu_s, "step_ms": 1e3 * timing["median_s"], "step_ms_min": 1e3 * timing["min_s"],
            "first_call_s": timing["first_call_s"], "step_times_s": timing["times_s"],
            "params": int(sum(math.prod(v.shape) for v in variables)),
            "peak_step_bytes": _peak_rss_bytes() - before, "peak_rss_bytes": _peak_rss_bytes()}


def _fit_parameterizations(case):
    """Fits every candidate t(k) to each target on |k| < FIT_LENGTH and reads it back longer."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_gmlp.layers import ToeplitzProjection

    class RawOffset(ToeplitzProjection):
        offset_features = staticmethod(lambda k: keras.ops.expand_dims(k, -1))

    candidates = {
        "log(1+|k|) MLP x 0.99^|k| (chosen)": (ToeplitzProjection, 0.99),
        "raw k MLP x 0.99^|k| (TNN's input)": (RawOffset, 0.99),
        "log(1+|k|) MLP, no decay": (ToeplitzProjection, 1.0),
        "raw k MLP, no decay": (RawOffset, 1.0),
    }
    rows = []
    lengths = (FIT_LENGTH, 256, 1024)
    far = case["far_length"]
    for target_name, target in TARGETS.items():
        truth = {n: np.array([target(k) for k in range(-(n - 1), n)], "float32") for n in lengths}
        for name, (cls, decay) in candidates.items():
            keras.utils.set_random_seed(0)
            layer = cls(decay=decay)
            layer.build((None, FIT_LENGTH, 2))
            optimizer = keras.optimizers.Adam(3e-3)
            fit_truth = tf.constant(truth[FIT_LENGTH])
            variables = [v for v in layer.trainable_variables if "rpe" in v.path]

            @tf.function
            def train_step():
                with tf.GradientTape() as tape:
                    t = layer.coefficients(FIT_LENGTH)[0]
                    loss = tf.reduce_mean(tf.square(t - fit_truth)) / tf.reduce_mean(tf.square(fit_truth))
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return loss

            for _ in range(case["fit_steps"]):
                loss = train_step()
            row = {"target": target_name, "candidate": name, "fit_loss": float(loss)}
            for n in lengths:
                t = keras.ops.convert_to_numpy(layer.coefficients(n)[0])
                err = np.sqrt(np.sum((t - truth[n]) ** 2) / np.sum(truth[n] ** 2))
                row[f"relative_error_{n}"] = float(err)
            t_far = np.abs(keras.ops.convert_to_numpy(layer.coefficients(far)[0]))
            row["max_abs_t_past_1024"] = float(np.max(t_far[: far - 1024]))
            row["max_abs_t_past_1024_of"] = far
            rows.append(row)
    return {"rows": rows}


def _crossover(case):
    results = []
    for n in case["lengths"]:
        for method in ("dense", "fft"):
            sub = dict(case, kind="projection", n=n, method=method)
            row = _time_layer(sub)
            row.update(n=n, method=method)
            results.append(row)
            print(json.dumps({"progress": f"projection {method} n={n}: {row['step_ms']:.1f} ms"}), flush=True)
            import keras

            keras.backend.clear_session()
    return {"rows": results}


def _series(case):
    """Times each block case of `case["cases"]` in turn, announcing each (for the watcher)."""
    import gc

    import keras

    # A throwaway short case first: lazy imports and the runtime's first allocations would
    # otherwise count as the first length's memory.
    _time_layer(dict(case["cases"][0], n=16, steps=1))
    keras.backend.clear_session()
    for sub in case["cases"]:
        print("START " + json.dumps({"n": sub["n"], "rss_bytes": _rss_bytes()}), flush=True)
        row = _time_layer(sub)
        row["rss_before_bytes"] = row.pop("peak_rss_bytes") - row["peak_step_bytes"]
        print("CASE " + json.dumps(row), flush=True)
        keras.backend.clear_session()
        gc.collect()
    return {}


CHILD = {"series": _series, "block": _time_layer, "backbone": _time_backbone, "parameterization": _fit_parameterizations,
         "crossover": _crossover}


def child_main(case):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = CHILD[case["kind"]](case)
    print("RESULT " + json.dumps(result), flush=True)


# --- parent side: runs each case in a watched child ---


def run_case(case, memory_cap_bytes, timeout_s, on_line=None):
    """Runs `case` in a child process; returns its result dict, with `status` "ok",
    "over memory cap", "over time" or "failed".

    `on_line(line, rss_bytes)`, if given, sees each line the child prints, with the child's
    resident set at that moment, and may return a new deadline (seconds from now) for it.
    """
    import queue
    import threading

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.long_context", "--child", json.dumps(case)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    start, peak, status, output = time.monotonic(), 0, None, []
    deadline = start + timeout_s
    status_path = f"/proc/{proc.pid}/status"
    while proc.poll() is None or not lines.empty() or reader.is_alive():
        try:
            with open(status_path) as f:
                rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            rss = 0
        peak = max(peak, rss)
        if on_line:
            on_line(None, rss)
        while not lines.empty():
            line = lines.get().rstrip("\n")
            output.append(line)
            if on_line and on_line(line, rss) is not None:
                deadline = time.monotonic() + on_line(line, rss)
        if proc.poll() is not None:
            if not reader.is_alive() and lines.empty():
                break
            time.sleep(0.02)
            continue
        if rss > memory_cap_bytes:
            status = "over memory cap"
        elif time.monotonic() > deadline:
            status = "over time"
        if status:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.05)
    reader.join(timeout=5)
    wall_s = time.monotonic() - start
    result = {"status": status or "ok", "wall_s": wall_s, "watched_peak_rss_bytes": peak}
    results = [line for line in output if line.startswith("RESULT ")]
    if status is None and results:
        result.update(json.loads(results[-1][len("RESULT "):]))
    elif status is None:
        result.update(status="failed", log_tail="\n".join(output[-15:]))
    return result


def predicted_bytes(model, n, batch, hidden_dim, ffn_dim):
    """A lower bound of a block step's memory from its n^2 terms alone (float32): the dense W,
    its gradient and optimizer-free matmul temporaries; the attention scores, softmax and their
    gradients. Cases above the cap are not started."""
    if model == "dense_gmlp":
        return 3 * 4 * n * n
    if model == "transformer":
        return 3 * 4 * batch * max(1, hidden_dim // 64) * n * n
    return 0


def run_blocks(args, log):
    """One child per model times its lengths in turn; the series stops at the first case over
    the memory cap or the time limit (a case predicted over the cap is not started)."""
    rows = []
    for model in MODELS:
        series = []
        for n in args.lengths:
            row = {"section": "blocks", "model": model, "n": n, "batch": args.batch,
                   "hidden_dim": args.hidden_dim, "ffn_dim": args.ffn_dim}
            predicted = predicted_bytes(model, n, args.batch, args.hidden_dim, args.ffn_dim)
            if predicted > args.memory_cap_bytes:
                row.update(status="predicted over memory cap", predicted_bytes=predicted)
            series.append(row)
        runnable = []
        for row in series:
            if "status" in row:
                break
            runnable.append(row)
        state = {"current": None}

        def on_line(line, rss):
            current = state["current"]
            if line is None:
                if current is not None:
                    current["watched_peak_rss_bytes"] = max(current.get("watched_peak_rss_bytes", 0), rss)
                return None
            if line.startswith("START "):
                info = json.loads(line[len("START "):])
                state["current"] = next(r for r in runnable if r["n"] == info["n"])
                state["current"]["watched_peak_rss_bytes"] = rss
                state["current"]["rss_at_start_bytes"] = info["rss_bytes"]
                return args.case_timeout_s
            if line.startswith("CASE ") and current is not None:
                current.update(json.loads(line[len("CASE "):]), status="ok")
                # The process's ru_maxrss only grows over a series: the case's own peak is the
                # watched peak during it above the resident set it started from.
                current["ru_maxrss_delta_bytes"] = current.pop("peak_step_bytes")
                current["peak_step_bytes"] = max(
                    0, current["watched_peak_rss_bytes"] - current["rss_at_start_bytes"])
                log(_block_line(current))
                state["current"] = None
            return None

        cases = [dict(kind="block", model=model, n=row["n"], batch=args.batch, hidden_dim=args.hidden_dim,
                      ffn_dim=args.ffn_dim, steps=args.steps) for row in runnable]
        outcome = run_case({"kind": "series", "cases": cases}, args.memory_cap_bytes,
                           args.case_timeout_s, on_line=on_line) if cases else {"status": "ok"}
        stopped = None
        for row in series:
            if "status" not in row:
                if stopped:
                    row["status"] = f"not run ({stopped} at a shorter length)"
                elif row is state["current"]:
                    row["status"] = outcome["status"]
                    if outcome["status"] == "failed":
                        row["log_tail"] = outcome.get("log_tail")
                else:
                    row["status"] = "not reached"
            if row["status"] != "ok":
                if not stopped:
                    log(_block_line(row))
                stopped = stopped or row["status"]
            rows.append(row)
    return rows


def _block_line(row):
    if row["status"] != "ok":
        return f"  {row['model']:14s} n={row['n']:6d}  {row['status']}"
    return (f"  {row['model']:14s} n={row['n']:6d}  {row['step_ms']:10.1f} ms  "
            f"{row['peak_step_bytes'] / 2**20:8.0f} MiB  ({row['implementation']})")


def crossover_length(rows):
    """The first length from which the FFT is faster than the dense matmul at every longer length."""
    times = {}
    for row in rows:
        times.setdefault(row["n"], {})[row["method"]] = row["step_ms"]
    lengths = sorted(times)
    for i, n in enumerate(lengths):
        if all(times[m]["fft"] < times[m]["dense"] for m in lengths[i:]):
            return n
    return None


def block_crossovers(rows):
    """For each pair of models, the first length from which the first is faster at every
    longer length both ran (or where the second stopped running)."""
    ok = {(r["model"], r["n"]): r["step_ms"] for r in rows if r["status"] == "ok"}
    lengths = sorted({r["n"] for r in rows})
    result = {}
    for fast, slow in (("toeplitz_gmlp", "dense_gmlp"), ("toeplitz_gmlp", "transformer"),
                       ("dense_gmlp", "transformer")):
        found = None
        for i, n in enumerate(lengths):
            if all((fast, m) in ok and ((slow, m) not in ok or ok[(fast, m)] < ok[(slow, m)])
                   for m in lengths[i:] if (fast, m) in ok or (slow, m) in ok):
                found = n
                break
        result[f"{fast} faster than {slow} from n"] = found
    return result


def write_report(result, output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "long_context.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (output_dir / "long_context.md").write_text(md)
    _plot(result, output_dir / "long_context.png")
    return md


def markdown(result):
    s = result["settings"]
    lines = [f"Run at {result['system']['time_utc']} on {result['system']['cpu_count']} cores "
             f"({result['system']['processor']}), load average before {result['load_before']}, after "
             f"{result['load_after']}; `{result['command']}`. A loaded machine: read ratios measured in "
             "this run, not absolute times, and rerun on a quiet machine for the record.", ""]
    if result.get("parameterization"):
        lines += ["#### Toeplitz coefficients past the trained range",
                  "", f"Each candidate fitted (Adam, {s['fit_steps']} steps) to a target kernel on the offsets "
                  f"of {FIT_LENGTH} tokens; relative L2 error of t(k) against the target on the offsets of n tokens, "
                  "and the largest |t(k)| at offsets from 1,024 to "
                  f"{s['far_length']:,} (the targets: local ~1e-55 there, long ~0.015).", "",
                  "| target | candidate | fit (n=64) | n=256 | n=1024 | max abs t(k), abs k >= 1024 |",
                  "|---|---|---|---|---|---|"]
        for r in result["parameterization"]:
            lines.append(f"| {r['target']} | {r['candidate']} | {r['relative_error_64']:.3f} | "
                         f"{r['relative_error_256']:.3f} | {r['relative_error_1024']:.3f} | "
                         f"{r['max_abs_t_past_1024']:.2g} |")
        lines.append("")
    if result.get("crossover"):
        lines += ["#### Dense Toeplitz matmul against FFT (ToeplitzProjection forward+backward)", "",
                  f"{s['ffn_dim'] // 2} channels, 1 head, batch {max(2, s['batch'])}. Crossover (FFT faster from here on): "
                  f"**n = {result['fft_crossover']}**.", "", "| n | dense ms | FFT ms | FFT / dense |", "|---|---|---|---|"]
        by_n = {}
        for r in result["crossover"]:
            by_n.setdefault(r["n"], {})[r["method"]] = r["step_ms"]
        for n, t in sorted(by_n.items()):
            lines.append(f"| {n} | {t['dense']:.2f} | {t['fft']:.2f} | {t['fft'] / t['dense']:.2f} |")
        lines.append("")
    if result.get("blocks"):
        lines += ["#### One block, forward+backward, against sequence length", "",
                  f"hidden {s['hidden_dim']}, ffn {s['ffn_dim']}, batch {s['batch']}, float32; memory cap "
                  f"{s['memory_cap_gib']} GiB and {s['case_timeout_s']} s per case. Peak = the highest resident set "
                  "sampled during the case (build, tracing, first call and timed steps) above the one it started from.", "",
                  "| n | " + " | ".join(f"{m} ms | {m} peak MiB" for m in MODELS) + " |",
                  "|---|" + "---|---|" * len(MODELS)]
        cells = {(r["model"], r["n"]): r for r in result["blocks"]}
        for n in s["lengths"]:
            row = [str(n)]
            for m in MODELS:
                r = cells.get((m, n))
                if r is None:
                    row += ["", ""]
                elif r["status"] == "ok":
                    row += [f"{r['step_ms']:.1f}", f"{r['peak_step_bytes'] / 2**20:.0f}"]
                else:
                    row += [r["status"], ""]
            lines.append("| " + " | ".join(row) + " |")
        lines += [""] + [f"- {k}: {v}" for k, v in result["block_crossovers"].items()] + [""]
        impl = sorted({r["implementation"] for r in result["blocks"] if "implementation" in r})
        lines += ["Implementations: " + "; ".join(impl) + ".", ""]
    if result.get("backbone"):
        b = result["backbone"]
        lines += ["#### 2-block Toeplitz backbone, one forward+backward step", ""]
        if b["status"] == "ok":
            lines.append(f"n = {s['backbone_length']:,}, batch 1, hidden {s['hidden_dim']}, ffn {s['ffn_dim']}: "
                         f"**{b['step_ms'] / 1e3:.2f} s** per step (median of {s['steps']}; first call with tracing "
                         f"{b['first_call_s']:.1f} s"
                         + (f"; {b['step_cpu_s']:.1f} CPU seconds for one step, all threads" if "step_cpu_s" in b else "")
                         + f"), peak {b['peak_step_bytes'] / 2**20:.0f} MiB above the process, "
                         f"{b['params']:,} parameters ({b['implementation']}).")
        else:
            lines.append(f"n = {s['backbone_length']:,}: {b['status']}.")
        lines.append("")
    return "\n".join(lines)


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in MODELS:
        rows = [r for r in result.get("blocks", []) if r["model"] == model and r["status"] == "ok"]
        if rows:
            n = [r["n"] for r in rows]
            axes[0].loglog(n, [r["step_ms"] for r in rows], "o-", label=model)
            axes[1].loglog(n, [max(r["peak_step_bytes"], 1) / 2**20 for r in rows], "o-", label=model)
    axes[0].set(xlabel="sequence length n", ylabel="forward+backward ms (one block)", title="time")
    axes[1].set(xlabel="sequence length n", ylabel="step peak MiB", title="memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every section runs")
    parser.add_argument("--sections", default="parameterization,crossover,blocks,backbone")
    parser.add_argument("--output-dir", type=pathlib.Path, default=None)
    parser.add_argument("--memory-cap-gib", type=float, default=4.0)
    parser.add_argument("--case-timeout-s", type=float, default=180.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--ffn-dim", type=int, default=768)
    parser.add_argument("--backbone-length", type=int, default=65536)
    args = parser.parse_args(argv)
    args.lengths = (128, 256, 512) if args.quick else LENGTHS
    args.crossover_lengths = (16, 64, 128) if args.quick else CROSSOVER_LENGTHS
    args.fit_steps = 20 if args.quick else 600
    args.far_length = 2048 if args.quick else 65536
    if args.quick:
        args.hidden_dim, args.ffn_dim, args.backbone_length, args.steps = 16, 32, 512, 1
    args.memory_cap_bytes = int(args.memory_cap_gib * GIB)
    if args.output_dir is None:
        args.output_dir = pathlib.Path("benchmarks/results") / ("quick" if args.quick else "")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child_main(json.loads(args.child))
    from benchmarks.timing import system_info

    sections = args.sections.split(",")
    result = {"command": "python -m benchmarks.long_context " + " ".join(sys.argv[1:] if argv is None else argv),
              "system": system_info(), "load_before": os.getloadavg(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("child", "output_dir")}}
    log = print
    if "parameterization" in sections:
        log("parameterization of t(k)")
        r = run_case({"kind": "parameterization", "fit_steps": args.fit_steps, "far_length": args.far_length},
                     args.memory_cap_bytes, 20 * args.case_timeout_s)
        result["parameterization"] = r.get("rows", [])
        for row in result["parameterization"]:
            log(f"  {row['target']:6s} {row['candidate']:38s} fit {row['relative_error_64']:.3f}  "
                f"256: {row['relative_error_256']:.3f}  1024: {row['relative_error_1024']:.3f}  "
                f"max|t| past 1024: {row['max_abs_t_past_1024']:.2g}")
        if r["status"] != "ok":
            log(f"  {r['status']}: {r.get('log_tail', '')}")
    if "crossover" in sections:
        log("dense Toeplitz matmul vs FFT")
        r = run_case({"kind": "crossover", "lengths": list(args.crossover_lengths), "batch": max(2, args.batch),
                      "hidden_dim": args.hidden_dim, "ffn_dim": args.ffn_dim, "steps": max(3, args.steps)},
                     args.memory_cap_bytes, 5 * args.case_timeout_s)
        result["crossover"] = r.get("rows", [])
        if result["crossover"]:
            result["fft_crossover"] = crossover_length(result["crossover"])
            for row in result["crossover"]:
                log(f"  {row['method']:5s} n={row['n']:5d} {row['step_ms']:8.2f} ms")
            log(f"  crossover: n = {result['fft_crossover']}")
        else:
            log(f"  {r['status']}: {r.get('log_tail', '')}")
    if "blocks" in sections:
        log("one block, forward+backward")
        result["blocks"] = run_blocks(args, log)
        result["block_crossovers"] = block_crossovers(result["blocks"])
        for k, v in result["block_crossovers"].items():
            log(f"  {k}: {v}")
    if "backbone" in sections:
        log(f"2-block Toeplitz backbone at n={args.backbone_length}")
        result["backbone"] = run_case({"kind": "backbone", "n": args.backbone_length, "batch": 1,
                                       "hidden_dim": args.hidden_dim, "ffn_dim": args.ffn_dim,
                                       "steps": args.steps}, args.memory_cap_bytes, args.case_timeout_s)
        b = result["backbone"]
        log(f"  {b['status']}" + (f": {b['step_ms'] / 1e3:.2f} s per step, peak "
                                  f"{b['peak_step_bytes'] / 2**20:.0f} MiB" if b["status"] == "ok" else
                                  f" {b.get('log_tail', '')}"))
    result["load_after"] = os.getloadavg()
    md = write_report(result, args.output_dir)
    log("\n" + md)
    return result


if __name__ == "__main__":
    main()
