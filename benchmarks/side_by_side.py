"""Step times of this checkout's models against another commit's, in one process, interleaved.

    python -m benchmarks.side_by_side --baseline 390267b            # gMLP-S/16 and the 102M MLM
    python -m benchmarks.side_by_side --baseline 390267b --quick    # tiny sizes: checks it runs
    python -m benchmarks.side_by_side --baseline 390267b --graphs   # same ops traced? (no timing)

The baseline commit's `keras_gmlp` is taken with `git archive`, renamed `keras_gmlp_baseline`
(imports and the Keras registration package alike, so both register side by side) and
imported next to this checkout's. For every model and policy both versions build the same
model with the same weights (their outputs are compared), then their compiled training steps
(forward, backward, AdamW) and inference steps are timed in alternating order over `--rounds`
rounds of `--steps` steps each. Contention on a shared machine hits both alike within a round;
the table reports each version's median step, the ratio and the load average.
"""

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE_PACKAGE = "keras_gmlp_baseline"


def import_baseline(commit, directory):
    """Imports `commit`'s keras_gmlp as the package `keras_gmlp_baseline` and returns it."""
    archive = subprocess.run(["git", "archive", commit, "keras_gmlp"], cwd=REPO_ROOT,
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    os.rename(os.path.join(directory, "keras_gmlp"), os.path.join(directory, BASELINE_PACKAGE))
    for root, _, files in os.walk(os.path.join(directory, BASELINE_PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                with open(path, "w", encoding="utf-8") as f:
                    f.write(re.sub(r"\bkeras_gmlp\b", BASELINE_PACKAGE, text))
    sys.path.insert(0, directory)
    import importlib

    return importlib.import_module(f"{BASELINE_PACKAGE}.models")


def _cases(quick):
    if quick:
        return {
            "gMLP-S/16": dict(kind="vision", image_size=32, patch_size=8, num_layers=2, hidden_dim=32,
                              ffn_dim=96, batch=2),
            "gMLP-36 MLM (102M)": dict(kind="text", num_layers=2, hidden_dim=32, ffn_dim=64,
                                       sequence_length=16, vocabulary_size=500, num_masked=4, batch=2),
        }
    return {
        "gMLP-S/16": dict(kind="vision", image_size=224, patch_size=16, num_layers=30, hidden_dim=256,
                          ffn_dim=1536, batch=8),
        "gMLP-36 MLM (102M)": dict(kind="text", num_layers=36, hidden_dim=512, ffn_dim=3072,
                                   sequence_length=128, vocabulary_size=30522, num_masked=20, batch=8),
    }


def _build(models, case, policy):
    if case["kind"] == "vision":
        size = case["image_size"]
        backbone = models.GMLPVisionBackbone(
            image_shape=(size, size, 3), patch_size=case["patch_size"], num_layers=case["num_layers"],
            hidden_dim=case["hidden_dim"], ffn_dim=case["ffn_dim"], dtype=policy)
        return models.GMLPImageClassifier(backbone, 1000)
    backbone = models.GMLPBackbone(
        vocabulary_size=case["vocabulary_size"], num_layers=case["num_layers"],
        hidden_dim=case["hidden_dim"], ffn_dim=case["ffn_dim"],
        sequence_length=case["sequence_length"], dtype=policy)
    return models.GMLPMaskedLM(backbone)


def _batch(case):
    from benchmarks import text
    from benchmarks import vision

    if case["kind"] == "vision":
        images, labels = vision.make_images(case["batch"], case["image_size"], 1000)
        return images, labels, None
    return text.make_batch("gmlp", case["batch"], case["sequence_length"], case["vocabulary_size"],
                           case["num_masked"])


def _steps(model, inputs, labels, weights):
    """The compiled training step with its arguments, and the compiled inference step."""
    import tensorflow as tf

    from benchmarks.steps import make_inference_step
    from benchmarks.steps import make_train_step

    example = tf.nest.map_structure(lambda t: t[:1], inputs)
    infer = make_inference_step(model, example)
    if weights is None:
        return make_train_step(model, example, labels[:1]), (inputs, labels), infer
    return make_train_step(model, example, labels[:1], weighted=True), (inputs, labels, weights), infer


def _op_histogram(step, *args):
    """Op types of a traced step's graph and of every function it calls (the fused kernels)."""
    import collections

    graph = step.get_concrete_function(*args).graph
    ops = collections.Counter(op.type for op in graph.get_operations())
    for function in graph.as_graph_def().library.function:
        ops.update(f"function:{node.op}" for node in function.node_def)
    return ops


def compare_graphs(baseline_models, cases, policies, log=print):
    """Whether both versions trace the same ops (types and counts, kernels included) per step.

    Load-independent: equal graphs run the same kernels, so their step times can differ only
    by measurement noise.
    """
    import keras

    from benchmarks.common import release
    from keras_gmlp import models as current_models

    rows = []
    for name, case in cases.items():
        for policy in policies:
            release()
            keras.config.set_dtype_policy(policy)
            inputs, labels, weights = _batch(case)
            histograms = {}
            for version, models in (("baseline", baseline_models), ("current", current_models)):
                train, train_args, infer = _steps(_build(models, case, policy), inputs, labels, weights)
                histograms[version] = {"train": _op_histogram(train, *train_args),
                                       "infer": _op_histogram(infer, inputs)}
            for mode in ("train", "infer"):
                base, current = histograms["baseline"][mode], histograms["current"][mode]
                row = {"model": name, "policy": policy, "mode": mode,
                       "baseline_ops": sum(base.values()), "current_ops": sum(current.values()),
                       "differing_op_types": ", ".join(sorted(k for k in set(base) | set(current) if base[k] != current[k])) or "none"}
                log(row)
                rows.append(row)
    release()
    return rows


def compare(baseline_models, cases, policies, rounds, steps, log=print):
    """Rows of (model, policy, mode) with both versions' median step times and their ratio."""
    import keras
    import numpy as np

    from benchmarks.common import release
    from benchmarks.timing import block_until_ready
    from benchmarks.timing import load_average
    from keras_gmlp import models as current_models
    from keras_gmlp.layers import legacy

    rows = []
    for name, case in cases.items():
        for policy in policies:
            release()
            keras.config.set_dtype_policy(policy)
            keras.utils.set_random_seed(0)
            built = {"baseline": _build(baseline_models, case, policy)}
            built["current"] = _build(current_models, case, policy)
            # A baseline from before the u/v split has one first projection per block: split it.
            built["current"].set_weights(legacy.split_weight_list(
                [v.path for v in built["baseline"].weights], built["baseline"].get_weights()))
            inputs, labels, weights = _batch(case)
            steps_of = {}
            outputs = {}
            for version, model in built.items():
                train, train_args, infer = _steps(model, inputs, labels, weights)
                outputs[version] = np.asarray(infer(inputs), "float32")  # traces the inference step
                block_until_ready(train(*train_args))  # traces the training step
                steps_of[version] = {"train": lambda train=train, args=train_args: train(*args),
                                     "infer": lambda infer=infer: infer(inputs)}
            difference = float(np.abs(outputs["current"] - outputs["baseline"]).max())
            scale = float(np.abs(outputs["baseline"]).max())
            times = {(v, m): [] for v in built for m in ("train", "infer")}
            load_before = load_average()
            for r in range(rounds):
                order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
                for mode in ("train", "infer"):
                    for version in order:
                        step = steps_of[version][mode]
                        block_until_ready(step())  # one untimed step after switching models
                        for _ in range(steps):
                            start = time.perf_counter()
                            block_until_ready(step())
                            times[(version, mode)].append(time.perf_counter() - start)
            load_after = load_average()
            for mode in ("train", "infer"):
                base = statistics.median(times[("baseline", mode)])
                current = statistics.median(times[("current", mode)])
                row = {
                    "model": name, "policy": policy, "batch": case["batch"], "mode": mode,
                    "baseline_ms": 1e3 * base, "current_ms": 1e3 * current, "ratio": current / base,
                    "baseline_min_ms": 1e3 * min(times[("baseline", mode)]),
                    "current_min_ms": 1e3 * min(times[("current", mode)]),
                    "steps_each": len(times[("baseline", mode)]),
                    "max_output_difference": difference, "output_scale": scale,
                    "load_before": load_before, "load_after": load_after,
                }
                log(row)
                rows.append(row)
            del built, steps_of
    release()
    return rows


def table(rows, commit):
    lines = [
        f"Baseline: commit {commit} (as {BASELINE_PACKAGE}); current: this checkout. Median step "
        f"(min in brackets), ratio = current / baseline.",
        "",
        "| model | policy | batch | step | baseline ms | current ms | ratio | steps each | "
        "max output difference | load average before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = "/".join(
            "-" if value is None else f"{value[0]:.1f}" for value in (r["load_before"], r["load_after"]))
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['batch']} | {r['mode']} | "
            f"{r['baseline_ms']:.0f} ({r['baseline_min_ms']:.0f}) | {r['current_ms']:.0f} "
            f"({r['current_min_ms']:.0f}) | {r['ratio']:.3f} | {r['steps_each']} | "
            f"{r['max_output_difference']:.2g} of {r['output_scale']:.2g} | {load} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="commit (or branch) to compare against")
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script runs")
    parser.add_argument("--models", default=None, help="comma-separated subset of the model names")
    parser.add_argument("--policies", default="float32,mixed_bfloat16")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per version per round")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--graphs", action="store_true",
                        help="only compare the traced steps' ops (types and counts), no timing")
    args = parser.parse_args(argv)
    cases = _cases(args.quick)
    if args.models:
        wanted = [m for m in args.models.split(",") if m]
        unknown = sorted(set(wanted) - set(cases))
        if unknown:
            parser.error(f"--models: unknown {unknown}; choose from {sorted(cases)}")
        cases = {k: v for k, v in cases.items() if k in wanted}
    with tempfile.TemporaryDirectory(prefix="keras_gmlp_baseline-") as directory:
        baseline = import_baseline(args.baseline, directory)
        from benchmarks.common import log_row

        if args.graphs:
            compare_graphs(baseline, cases, [p for p in args.policies.split(",") if p], log=log_row)
            return 0
        rows = compare(baseline, cases, [p for p in args.policies.split(",") if p], args.rounds,
                       args.steps, log=log_row)
    text = table(rows, args.baseline)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
