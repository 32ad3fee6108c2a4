"""Training throughput on the JAX backend next to TensorFlow, and steps per host call.

    python -m benchmarks.jax_backend            # full sizes: gMLP-S/16 at 224, gMLP-36 MLM
    python -m benchmarks.jax_backend --quick    # tiny sizes, seconds

Each backend runs in its own child process (KERAS_BACKEND is fixed at import), one after the
other within one run, and the parent prints one table. Rows:

- gMLP-S/16 image-classifier training, images/s, and the ~102M-parameter gMLP-36 masked LM,
  tokens/s (all tokens of each sequence). TensorFlow: `benchmarks.steps.make_train_step`
  (the other benchmark sections' tf.function step). JAX: the trainers' compiled loop
  (`trainers.core.jax_loop.Trainer`, one step per call), which also clips gradients and sums
  the task's metrics.
- A tiny masked LM's time per step with one step per host call and with
  `--steps_per_loop`-style N steps per call (JAX), beside TensorFlow's tf.function step.

Timings are medians of a few calls after a warm-up call; the machine's load average is printed
with the table because a shared machine slows every row.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "full": dict(
        vision=dict(image_size=224, patch_size=16, num_layers=30, hidden_dim=256, ffn_dim=1536,
                    num_classes=1000, batch=8),
        text=dict(num_layers=36, hidden_dim=512, ffn_dim=3072, sequence_length=128,
                  vocabulary_size=30522, num_masked=20, batch=8),
    ),
    "quick": dict(
        vision=dict(image_size=32, patch_size=8, num_layers=2, hidden_dim=32, ffn_dim=96,
                    num_classes=10, batch=8),
        text=dict(num_layers=2, hidden_dim=32, ffn_dim=64, sequence_length=16,
                  vocabulary_size=500, num_masked=4, batch=8),
    ),
}
TINY = dict(num_layers=1, hidden_dim=32, ffn_dim=64, sequence_length=16, vocabulary_size=200,
            num_masked=4, batch=8)


def _vision_model(case, policy):
    from benchmarks import vision

    spec = dict(kind="gmlp", **{k: case[k] for k in ("image_size", "patch_size", "num_layers",
                                                      "hidden_dim", "ffn_dim")})
    return vision.build_keras_model(spec, policy, case["num_classes"])


def _text_model(case, policy):
    from benchmarks import text

    spec = dict(kind="gmlp", num_layers=case["num_layers"], hidden_dim=case["hidden_dim"],
                ffn_dim=case["ffn_dim"])
    return text.build_keras_model(spec, policy, case["sequence_length"], case["vocabulary_size"])


def _vision_batch(case):
    from benchmarks import vision

    images, labels = vision.make_images(case["batch"], case["image_size"], case["num_classes"])
    return images.numpy(), labels.numpy()


def _text_batch(case):
    from benchmarks import text

    inputs, labels, weights = text.make_batch("gmlp", case["batch"], case["sequence_length"],
                                              case["vocabulary_size"], case["num_masked"])
    return {k: v.numpy() for k, v in inputs.items()}, labels.numpy(), weights.numpy()


def _median_time(call, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class _Flags:
    # What trainers.core.optimization.make_optimizer reads.
    weight_decay, adam_beta_1, adam_beta_2, adam_epsilon = 0.01, 0.9, 0.999, 1e-6


def _tf_step(model, batch, weighted):
    import tensorflow as tf

    from benchmarks.steps import make_train_step

    batch = tf.nest.map_structure(tf.constant, batch)
    step = make_train_step(model, batch[0], batch[1], weighted=weighted)

    def call():
        step(*batch).numpy()

    call()  # trace and warm up
    return call, 1


def _jax_step(model, batch, kind, steps_per_call=1):
    import jax
    import numpy as np

    from trainers.core import jax_loop
    from trainers.core import optimization
    from trainers.pretrain_mlm import MaskedLMTask
    from trainers.train_image_classifier import ImageClassificationTask

    if kind == "vision":
        task = ImageClassificationTask(None)
        task.num_classes = model.output_shape[-1]
    else:
        task = MaskedLMTask(None)
    optimizer = optimization.make_optimizer(_Flags, 1e-4)
    optimizer.build(model.trainable_variables)
    trainer = jax_loop.Trainer(task, model, optimizer, None, 1.0)
    stacked = jax.tree_util.tree_map(lambda b: np.stack([b] * steps_per_call), batch)
    batches = trainer.device_batch(stacked, stacked=True)
    holder = [trainer.state()]

    def call():
        holder[0], outputs = trainer.train(holder[0], batches, steps_per_call)
        assert np.all(np.isfinite(outputs[0][:steps_per_call]))

    call()  # compile and warm up
    return call, steps_per_call


def child(backend, size, steps, policy):
    """Measures every row on `backend`; prints one JSON line per row."""
    import keras

    keras.config.set_dtype_policy(policy)
    cases = CASES[size]
    rows = []

    def emit(row):
        row.update(backend=backend, policy=policy)
        print("ROW " + json.dumps(row), flush=True)
        rows.append(row)

    for kind in ("vision", "text"):
        case = cases[kind]
        model = _vision_model(case, policy) if kind == "vision" else _text_model(case, policy)
        batch = _vision_batch(case) if kind == "vision" else _text_batch(case)
        start = time.perf_counter()
        if backend == "tensorflow":
            call, per_call = _tf_step(model, batch, weighted=kind == "text")
        else:
            call, per_call = _jax_step(model, batch, kind)
        first = time.perf_counter() - start
        seconds = _median_time(call, steps) / per_call
        items = case["batch"] * (1 if kind == "vision" else case["sequence_length"])
        emit(dict(row=("gMLP-S/16 train" if kind == "vision" else "gMLP-36 MLM (102M) train")
                  + ("" if size == "full" else " (quick size)"),
                  batch=case["batch"], throughput=items / seconds,
                  unit="images/s" if kind == "vision" else "tokens/s",
                  step_ms=1e3 * seconds, first_call_s=first, params=model.count_params()))
        keras.backend.clear_session()

    # Per-step overhead: a tiny MLM where the host round trip is most of a step.
    batch = _text_batch(TINY)
    for per_call in ((1,) if backend == "tensorflow" else (1, 32)):
        model = _text_model(TINY, policy)
        if backend == "tensorflow":
            call, per_call = _tf_step(model, batch, weighted=True)
        else:
            call, per_call = _jax_step(model, batch, "text", per_call)
        seconds = _median_time(call, max(steps, 5)) / per_call
        emit(dict(row=f"tiny MLM, {per_call} step(s) per host call", batch=TINY["batch"],
                  throughput=TINY["batch"] * TINY["sequence_length"] / seconds, unit="tokens/s",
                  step_ms=1e3 * seconds, first_call_s=None,
                  params=model.count_params()))
        keras.backend.clear_session()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per row")
    parser.add_argument("--policy", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--child", choices=["tensorflow", "jax"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    if args.child:
        child(args.child, size, args.steps, args.policy)
        return
    rows = []
    load_before = os.getloadavg()
    for backend in ("tensorflow", "jax"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        command = [sys.executable, "-m", "benchmarks.jax_backend", "--child", backend,
                   "--steps", str(args.steps), "--policy", args.policy]
        if args.quick:
            command.append("--quick")
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{backend} child failed:\n{result.stderr[-4000:]}")
        rows += [json.loads(line[4:]) for line in result.stdout.splitlines()
                 if line.startswith("ROW ")]
    load_after = os.getloadavg()
    tf_rows = {r["row"]: r for r in rows if r["backend"] == "tensorflow"}
    print(f"| row | backend | policy | batch | throughput | ms/step | JAX / TF |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        reference = tf_rows.get(row["row"]) or tf_rows.get(
            row["row"].replace("32 step(s)", "1 step(s)"))
        ratio = (f"{row['throughput'] / reference['throughput']:.2f}x"
                 if row["backend"] == "jax" and reference else "")
        print(f"| {row['row']} | {row['backend']} | {row['policy']} | {row['batch']} | "
              f"{row['throughput']:.1f} {row['unit']} | {row['step_ms']:.1f} | {ratio} |")
    jax_tiny = {r["row"]: r["step_ms"] for r in rows
                if r["backend"] == "jax" and r["row"].startswith("tiny")}
    if len(jax_tiny) == 2:
        one, many = (jax_tiny[k] for k in sorted(jax_tiny, key=lambda k: int(k.split()[2])))
        print(f"\nJAX per-step time of the tiny MLM: {one:.2f} ms at 1 step per call, "
              f"{many:.2f} ms at 32 (host overhead saved per step: {one - many:.2f} ms).")
    print(f"Load average (1, 5, 15 min) before: {load_before}, after: {load_after}; "
          f"{os.cpu_count()} CPUs. Time: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


if __name__ == "__main__":
    main()
