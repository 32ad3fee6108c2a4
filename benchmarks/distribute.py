"""Input work per worker and step overhead of the tf.distribute trainers.

    python -m benchmarks.distribute [--steps 150] [--batch 64] [--output-dir DIR]

Everything is measured side by side in one run, so compare ratios, not absolute numbers:

1. Input work per worker with 2 localhost MultiWorkerMirroredStrategy workers, before (every
   worker reads whole global batches, `--noper_worker_input`) and after (per-worker input, the
   default): the examples worker 1's pipeline decodes per step, and the seconds it needs to
   produce one step's input. The pipeline is the trainer's own (`ImageClassificationTask`), built
   with the `tf.distribute.InputContext` the trainer gives worker 1. Decoding runs after the
   shard, once per row, so the decoded examples per step are the rows of each batch it yields.
2. End-to-end steps/s of `trainers.train_image_classifier` with 1 worker and with 2 workers (both
   input modes), each run its own process(es).
3. Step overhead: a tiny model's steps/s with `--steps_per_loop` 1 and 100, i.e. one
   `train_loop` call per step against one call per 100 steps, in one process.

The image data is a folder of PNGs made from scikit-learn's digits (upscaled to 32x32 RGB), so
that decoding is real work. `uptime`'s load is printed with the tables.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
TRAINER_ARGS = [f"--image_size={IMAGE_SIZE}", "--warmup_steps=0", "--decay=constant",
                "--eval_steps=1", "--seed=1"]
TINY = "--model_overrides=num_layers=1,patch_size=2,hidden_dim=32,ffn_dim=64"


def write_png_folder(root):
    """root/train/<digit>/<i>.png and root/test/...: the digits as 32x32 RGB PNGs."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.repeat(digits.images[..., None] * (255.0 / 16.0), 3, axis=-1)
    images = tf.image.resize(images, (IMAGE_SIZE, IMAGE_SIZE)).numpy().clip(0, 255)
    for index, (image, label) in enumerate(zip(images.astype("uint8"), digits.target)):
        split = "test" if index % 10 == 0 else "train"
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        tf.io.write_file(os.path.join(folder, f"{index}.png"), tf.io.encode_png(image))
    return root


def _image_task(data, batch, *args):
    from absl import flags

    from trainers import train_image_classifier

    fv = flags.FlagValues()
    train_image_classifier.define_flags(fv)
    source = [f"--data={data}"] if data else []
    fv(["benchmark", "--model_dir=/nonexistent", *source, f"--global_batch_size={batch}",
        *TRAINER_ARGS, *args])
    task = train_image_classifier.ImageClassificationTask(fv)
    task.prepare(None, False)
    return task


def input_work(data, batch, steps):
    """Worker 1 of 2: decoded examples per step and seconds per step's input, both modes."""
    import tensorflow as tf

    task = _image_task(data, batch)
    rows = []
    for mode, dataset in (
            ("global batches (before)", task.train_dataset(batch)),
            ("per-worker input (after)",
             task.train_dataset(batch // 2, tf.distribute.InputContext(2, 1, 2)))):
        iterator = iter(dataset)
        next(iterator)  # start-up: file listing, shuffle buffer, threads
        decoded = 0
        start = time.perf_counter()
        for _ in range(steps):
            images, _ = next(iterator)
            decoded += int(images.shape[0])
        seconds = time.perf_counter() - start
        rows.append(dict(mode=mode, decoded_per_step=decoded / steps,
                         input_ms_per_step=1e3 * seconds / steps))
    return rows


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _steps_per_second(model_dir):
    """Steps/s over the logged intervals after the first (start-up) one."""
    records = []
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "steps_per_second" in record:
                records.append(record)
    intervals = [(b["step"] - a["step"], b["steps_per_second"])
                 for a, b in zip(records, records[1:])][1:]
    return sum(n for n, _ in intervals) / sum(n / rate for n, rate in intervals)


def _log_tail(path, lines=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def end_to_end(data, batch, steps, workdir, repeats=1):
    """Steps/s of the image trainer: 1 worker, 2 workers with and without per-worker input.

    A run whose trainer exits non-zero is reported (exit codes, and each worker's log tail on
    stderr) rather than ending the benchmark.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    # The PNG folder is upscaled to IMAGE_SIZE; a named source (fashion_mnist) keeps its size.
    size = TRAINER_ARGS if os.path.isdir(data) else TRAINER_ARGS[1:]
    common = [sys.executable, "-m", "trainers.train_image_classifier", f"--data={data}",
              f"--global_batch_size={batch}", f"--train_steps={steps}",
              f"--log_every={max(steps // 5, 1)}", f"--checkpoint_every={steps}", *size]
    runs = (("1 worker", 1, []),
            ("2 workers, global batches (before)", 2, ["--noper_worker_input"]),
            ("2 workers, per-worker input (after)", 2, []))
    # Repeats cycle through the runs, so slow spells of a shared machine hit each alike.
    rates = {name: [] for name, _, _ in runs}
    failures = {}
    for repeat in range(repeats):
        for name, workers, extra in runs:
            rate = _trainer_run(name, workers, extra, common, env,
                                os.path.join(workdir, f"{repeat}_" + name.replace(" ", "_").replace(",", "")))
            if isinstance(rate, str):
                failures[name] = rate
            else:
                rates[name].append(rate)
    rows = []
    for name, _, _ in runs:
        values = sorted(rates[name])
        median = values[len(values) // 2] if values else float("nan")
        rows.append(dict(run=name, steps_per_second=median, examples_per_second=batch * median,
                         runs=", ".join(f"{v:.3g}" for v in rates[name]),
                         failed=failures.get(name, "")))
    return rows


def _trainer_run(name, workers, extra, common, env, model_dir):
    """One run's steps/s, or a string saying how it failed (its log tails go to stderr)."""
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    processes = []
    for index in range(workers):
        worker_env = dict(env)
        if workers > 1:
            worker_env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        strategy = "multi_worker_mirrored" if workers > 1 else "default"
        log = open(f"{model_dir}.{index}.log", "w")
        processes.append(subprocess.Popen(
            [*common, f"--model_dir={model_dir}", f"--strategy={strategy}", *extra],
            cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT))
    codes = [process.wait(timeout=1800) for process in processes]
    if any(codes):
        for index in range(workers):
            print(f"--- {name}, worker {index} (exit {codes[index]}), last lines of its log:\n"
                  + _log_tail(f"{model_dir}.{index}.log"), file=sys.stderr)
        return f"exit codes {codes}"
    return _steps_per_second(model_dir)


def step_overhead(repeats, loop_steps=100):
    """A tiny model's steps/s at 1 and `loop_steps` steps per `train_loop` call."""
    import keras
    import tensorflow as tf

    from trainers.core import loop

    task = _image_task(None, 16, TINY)
    keras.utils.set_random_seed(0)
    model = task.build_model()
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(model.trainable_variables)
    train_loop = loop.make_train_loop(task, model, optimizer, tf.distribute.get_strategy(), 1.0,
                                      True)
    iterator = iter(task.train_dataset(16))
    one, many = tf.constant(1), tf.constant(loop_steps)
    float(train_loop(iterator, many)[1])  # trace and warm up
    times = {1: [], loop_steps: []}
    for _ in range(repeats):  # alternated, so both see the same machine load
        start = time.perf_counter()
        for _ in range(loop_steps):
            float(train_loop(iterator, one)[1])
        times[1].append(time.perf_counter() - start)
        start = time.perf_counter()
        float(train_loop(iterator, many)[1])
        times[loop_steps].append(time.perf_counter() - start)
    return [dict(steps_per_loop=n, steps_per_second=loop_steps / sorted(t)[len(t) // 2])
            for n, t in times.items()]


def _table(rows):
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else
                                       str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="trainer steps per run")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--input-steps", type=int, default=50, help="input steps timed")
    parser.add_argument("--repeats", type=int, default=5, help="step-overhead repeats")
    parser.add_argument("--output-dir", help="also write distribute.json here")
    parser.add_argument("--e2e-data", default=None,
                        help="--data of the end-to-end runs (default: the PNG digits folder; "
                        "fashion_mnist: Debian's Fashion-MNIST, the real image set)")
    parser.add_argument("--e2e-repeats", type=int, default=1,
                        help="end-to-end runs of each kind, interleaved (median reported)")
    parser.add_argument("--sections", default="input,e2e,overhead",
                        help="comma-separated subset of input, e2e, overhead")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as workdir:
        data = write_png_folder(os.path.join(workdir, "digits_png"))
        sections = set(args.sections.split(","))
        result = {"load_before": os.getloadavg()}
        if "input" in sections:
            result["input_work"] = input_work(data, args.batch, args.input_steps)
        if "e2e" in sections:
            result["end_to_end"] = end_to_end(args.e2e_data or data, args.batch, args.steps,
                                              workdir, args.e2e_repeats)
        if "overhead" in sections:
            result["step_overhead"] = step_overhead(args.repeats)
        result["load_after"] = os.getloadavg()
    if "input_work" in result:
        before, after = result["input_work"]
        print(f"\nInput work of worker 1 of 2 (global batch {args.batch}, 32x32 PNG digits):")
        print(_table(result["input_work"]))
        print(f"after / before: decoded "
              f"{after['decoded_per_step'] / before['decoded_per_step']:.2f}x, input time "
              f"{after['input_ms_per_step'] / before['input_ms_per_step']:.2f}x")
    if "end_to_end" in result:
        print(f"\nEnd to end, trainers.train_image_classifier ({args.steps} steps, gmlp_tiny4_32, "
              f"data {args.e2e_data or '32x32 PNG digits'}):")
        print(_table(result["end_to_end"]))
    if "step_overhead" in result:
        overhead = result["step_overhead"]
        print("\nStep overhead (tiny model, batch 16, CPU):")
        print(_table(overhead))
        print(f"100 / 1 steps per loop: "
              f"{overhead[1]['steps_per_second'] / overhead[0]['steps_per_second']:.2f}x")
    print(f"\nLoad average (1, 5, 15 min): before {result['load_before']}, "
          f"after {result['load_after']} on {os.cpu_count()} CPUs")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "distribute.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
