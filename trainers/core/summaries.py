"""Progress lines, TensorBoard summaries and metrics.jsonl for the training loop."""

import json
import os
import time

import tensorflow as tf
from absl import logging

METRICS_FILE = "metrics.jsonl"


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLog:
    """Writes what the loop reports, on the chief only.

    - an absl log line: step, loss, learning rate, steps/s, examples/s, ETA;
    - TensorBoard scalars under MODEL_DIR/train and MODEL_DIR/eval;
    - MODEL_DIR/metrics.jsonl, one JSON object per logged step (a resumed run appends; the
      last line for a step wins), so a run can be read back without TensorBoard.
    """

    def __init__(self, model_dir, is_chief, train_steps, global_batch_size):
        self.is_chief = is_chief
        self.train_steps = train_steps
        self.global_batch_size = global_batch_size
        self.sums = {}
        if is_chief:
            self.train_writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            self.eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
            self.jsonl = tf.io.gfile.GFile(os.path.join(model_dir, METRICS_FILE), "a")
        self.step = 0
        self.time = time.perf_counter()
        self.first = True

    def start(self, step):
        """Counts from `step` (the start, or the step a recovery went back to)."""
        self.sums = {}
        self.step = step
        self.time = time.perf_counter()
        self.first = True

    def restart_clock(self):
        """Leaves time spent elsewhere (evaluation) out of the next steps/s."""
        self.time = time.perf_counter()

    def accumulate(self, sums):
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def write(self, step, loss, learning_rate, grad_norm, metrics_fn, now=None):
        """Logs `step`; `now` is when it finished (perf_counter; default: now)."""
        now = time.perf_counter() if now is None else now
        steps_per_second = (step - self.step) / max(now - self.time, 1e-9)
        # The first interval includes tracing the step function: no ETA from it.
        first = self.first
        self.first = False
        self.step, self.time = step, now
        metrics = metrics_fn(self.sums) if self.sums else {}
        self.sums = {}
        eta = "-" if first else _duration((self.train_steps - step) / max(steps_per_second, 1e-9))
        logging.info(
            "step %d/%d  loss %.4f  %s lr %.3g  %.2f steps/s  %.0f examples/s  ETA %s",
            step, self.train_steps, loss,
            "".join(f"{k} {v:.4f}  " for k, v in metrics.items() if k != "loss"),
            learning_rate, steps_per_second, steps_per_second * self.global_batch_size,
            eta)
        if not self.is_chief:
            return
        record = dict(step=step, loss=loss, learning_rate=learning_rate, grad_norm=grad_norm,
                      steps_per_second=steps_per_second,
                      examples_per_second=steps_per_second * self.global_batch_size,
                      **{f"train_{k}": v for k, v in metrics.items()})
        with self.train_writer.as_default(step=step):
            for key, value in record.items():
                if key != "step":
                    tf.summary.scalar(key, value)
        self.train_writer.flush()
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def write_eval(self, step, metrics, batches):
        logging.info("eval at step %d over %d batches: %s", step, batches,
                     "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if not self.is_chief:
            return
        with self.eval_writer.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(key, value)
        self.eval_writer.flush()
        self.jsonl.write(json.dumps(dict(step=step, eval=metrics)) + "\n")
        self.jsonl.flush()

    def close(self):
        if self.is_chief:
            self.train_writer.close()
            self.eval_writer.close()
            self.jsonl.close()
