"""The backend-neutral rules of the trainers' outer loop, shared by the TF and JAX runners.

Both training loops (`trainers.core.loop` on TensorFlow, `trainers.core.jax_loop` on JAX) call
these at the same points, so each rule is written once:

- `loop_length`: where a loop of many steps per host call ends;
- `compare_with_stored_run` / `write_run_files`: an existing run is resumed only with its own
  settings, and the run files are written once the resume can go on;
- the per-worker input layout (`worker_input_dir`, `check_worker_inputs`);
- `Preemption`: SIGTERM / SIGINT save a checkpoint of the current step at the next loop
  boundary and end the run with `Preempted` (exit code 143 / 130);
- `Recovery`: a non-finite loss restores the newest finite checkpoint and skips the input
  window that led to it, up to `--max_recoveries` times, then stops with `NonFiniteLossError`
  (exit code 3).

See trainers/DESIGN.md for the layout of the trainers and the direction of their imports.
"""

import json
import os
import re
import signal
import threading

import tensorflow as tf
from absl import logging

from trainers.core import checkpoints
from trainers.core import run_dir

NON_FINITE_EXIT_CODE = 3
# 143 is what TensorFlow's PreemptionCheckpointHandler exits with after its checkpoint on GCE
# (its "restartable" code) and what a shell or Kubernetes reports for a process ended by
# SIGTERM; 130 is the shell's code for SIGINT. A scheduler that restarts preempted jobs by exit
# code therefore treats a trainer that saved and exited like one that was killed.
PREEMPTION_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf (and no recovery was left); that step was not saved."""


class Preempted(RuntimeError):
    """A SIGTERM or SIGINT arrived; a checkpoint of `step` was saved and the run stopped.

    `exit_code` is `PREEMPTION_EXIT_CODES` of the signal; `checkpoint` the path saved.
    """

    def __init__(self, signal_name, exit_code, step, checkpoint):
        super().__init__(
            f"{signal_name} received: saved a checkpoint of step {step} ({checkpoint}) and "
            f"stopped; exiting with {exit_code}. Run the same command again to resume from it.")
        self.exit_code = exit_code
        self.step = step
        self.checkpoint = checkpoint


def loop_length(step, start_step, fv, every_step_reported=False):
    """Steps in the next loop (one host call): up to --steps_per_loop, ending at every boundary.

    With `every_step_reported` (the JAX loop, whose loops return every step's loss and
    metrics) a loop is up to --steps_per_loop steps and ends only at checkpoint and evaluation
    steps and at --train_steps: the log lines inside it are written from what came back.

    Loops end at multiples of --steps_per_loop and never run past a step at which something
    happens on the host: a multiple of --log_every, --checkpoint_every or --eval_every, the
    first step of this process (logged on its own) or --train_steps. So intervals that are not
    multiples of --steps_per_loop (or a --train_steps that is not) give shorter loops, every
    interval is kept exactly, and a resumed run's loops end where an uninterrupted run's do.
    """
    if every_step_reported:
        count = min(fv.steps_per_loop, fv.train_steps - step,
                    fv.checkpoint_every - step % fv.checkpoint_every)
        return min(count, fv.eval_every - step % fv.eval_every) if fv.eval_every else count
    if step == start_step:
        return 1
    end = fv.train_steps
    for every in (fv.steps_per_loop, fv.log_every, fv.checkpoint_every, fv.eval_every):
        if every:
            end = min(end, (step // every + 1) * every)
    return end - step


# ---- the run directory as the outer loop uses it --------------------------------------------

def compare_with_stored_run(task, backbone_config, save_iterator):
    """Raises `run_dir.RunDirError` if the run in model_dir was made with other settings."""
    fv = task.flags
    stored = run_dir.stored_settings(fv.model_dir)
    given, sources = {}, {}
    if backbone_config is not None:
        given.update(run_dir.backbone_settings(backbone_config))
        sources.update(dict.fromkeys(given, "--model / --model_overrides / --sequence_length "
                                     "(or the --init_checkpoint backbone)"))
    vocabulary = getattr(task, "vocabulary", None)
    if vocabulary is not None:
        given["vocabulary"] = list(vocabulary)
        sources["vocabulary"] = (f"--vocab_file={fv.vocab_file}" if fv.vocab_file else
                                 "--init_checkpoint's vocab.txt")
        if "backbone vocabulary_size" in stored:
            sources["backbone vocabulary_size"] = sources["vocabulary"]
    # The saved input position holds batches of the stored size; without it any size resumes.
    if save_iterator and stored.get("checkpoint_iterator", True):
        given["global_batch_size"] = fv.global_batch_size
        sources["global_batch_size"] = (
            f"--global_batch_size={fv.global_batch_size} (the checkpoint's input position "
            "holds batches of the stored size; --nocheckpoint_iterator resumes with new ones)")
    run_dir.compare_settings(stored, given, fv.model_dir, sources)


def write_run_files(task, backbone_config, found, resumed):
    """Flags, backbone config and the task's files (vocabulary), once the run can go on."""
    fv = task.flags
    model_dir = fv.model_dir
    run_dir.write_flags(model_dir, fv)
    if backbone_config is not None:
        run_dir.write_atomically(os.path.join(model_dir, run_dir.MODEL_CONFIG_FILE),
                                 json.dumps(backbone_config, indent=2, default=str))
    task.write_run_files(model_dir)
    if resumed is not None:
        # The state file may be lost or damaged: name the intact checkpoints up to the
        # restored one, so that CheckpointManager keeps and rotates them.
        older = [s for s in sorted(found) if s < resumed and
                 tf.io.gfile.exists(os.path.join(model_dir, f"ckpt-{s}.index"))]
        run_dir.write_state(model_dir, [f"ckpt-{s}" for s in older + [resumed]])
        return
    # A new run: files that name checkpoints or input windows of an older one go.
    for name in (run_dir.STATE_FILE, run_dir.RECOVERIES_FILE):
        if tf.io.gfile.exists(os.path.join(model_dir, name)):
            tf.io.gfile.remove(os.path.join(model_dir, name))


def worker_input_dir(model_dir, index):
    """Where worker (or JAX process) `index` > 0 keeps its input iterator."""
    return os.path.join(model_dir, f"input_worker_{index}")


def worker_input_path(model_dir, index, latest):
    """Worker `index`'s input iterator saved with the checkpoint `latest`."""
    return os.path.join(worker_input_dir(model_dir, index), os.path.basename(latest))


def check_worker_inputs(model_dir, latest, pipelines):
    """The latest checkpoint's per-worker iterators must be exactly this run's workers'."""
    found = set()
    for name in tf.io.gfile.listdir(model_dir):
        match = re.fullmatch(r"input_worker_(\d+)/?", name)
        if match and tf.io.gfile.exists(
                worker_input_path(model_dir, int(match[1]), latest) + ".index"):
            found.add(int(match[1]))
    if found != set(range(1, pipelines)):
        raise ValueError(
            f"--model_dir={model_dir}: {os.path.basename(latest)} was saved with "
            f"{len(found) + 1} input pipeline(s) (per-worker iterators of workers "
            f"{sorted(found)}), but this run has {pipelines}: expected the same workers and "
            "--per_worker_input setting, or --nocheckpoint_iterator to resume by skipping the "
            "batches already used.")


# ---- preemption ------------------------------------------------------------------------------

class Preemption:
    """SIGTERM and SIGINT, for the duration of a run, ask for a checkpoint and a prompt exit.

    The handler only records the signal, so it never interrupts anything half way (a
    checkpoint write included); a second signal changes nothing. The loop calls `exit_code`
    at every loop boundary. Handlers can only be installed from the main thread; elsewhere the
    signals keep their previous behaviour (logged).
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        return self.install()

    def install(self):
        """Installs the handlers (again): call it after starting anything that installs its own.

        TensorFlow's and JAX's coordination services (MultiWorkerMirroredStrategy,
        jax.distributed) install a C-level SIGTERM handler of their own, which would
        otherwise take the signal.
        """
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not in the main thread: SIGTERM/SIGINT will not save a checkpoint.")
            return self
        for signum in PREEMPTION_EXIT_CODES:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc_info):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def exit_code(self, agree=None):
        """0, or the exit code once any worker was signalled (the same on every worker).

        `agree(counts) -> counts`, given on several workers/processes, sums a list of ints over
        all of them (one collective per loop boundary), so that every worker stops at the same
        step.
        """
        codes = list(PREEMPTION_EXIT_CODES.values())
        counts = [int(PREEMPTION_EXIT_CODES.get(self.signum) == code) for code in codes]
        if agree is not None:
            counts = [int(c) for c in agree(counts)]
        return next((code for code, count in zip(codes, counts) if count), 0)

    def preempted(self, step, save, agree=None):
        """Raises `Preempted` after `save()` (-> the checkpoint path) if a signal arrived."""
        code = self.exit_code(agree)
        if not code:
            return
        name = {c: signal.Signals(s).name for s, c in PREEMPTION_EXIT_CODES.items()}[code]
        logging.warning("%s received: saving a checkpoint of step %d, then exiting with %d.",
                        name, step, code)
        path = save()
        logging.warning("Saved %s.", path)
        raise Preempted(name, code, step, path)


# ---- recovery from a non-finite loss ---------------------------------------------------------

class Recovery:
    """--max_recoveries: what the loop does when a step's loss or gradient norm is not finite.

    The runner never applies such an update. `recover` deletes a checkpoint written just before
    the bad step (its weights gave the loss), then either raises `NonFiniteLossError` (no
    recovery left, or no checkpoint to go back to) or restores the newest remaining checkpoint
    and records the input window to skip: the batches that steps restored+1 .. bad step read.
    The windows are kept in MODEL_DIR/recoveries.json, so `input_skip` positions the input of
    any later restore or resume past them too.
    """

    def __init__(self, model_dir, max_recoveries, chief, resumed):
        self.model_dir = model_dir
        self.max_recoveries = max_recoveries
        self.chief = chief
        self.used = 0
        self.path = os.path.join(model_dir, run_dir.RECOVERIES_FILE)
        self.windows = []
        if resumed and tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                self.windows = json.load(f)

    def input_skip(self, step, saves_iterator):
        """Batches to skip after restoring a checkpoint of `step` (0: a new run).

        A restored iterator already passed the windows skipped before its checkpoint was
        saved, not those skipped after restoring that very checkpoint; an input without a
        saved position skips every batch read or skipped up to `step`.
        """
        if saves_iterator:
            return sum(w["skipped_batches"] for w in self.windows if w["restored_step"] == step)
        return step + sum(w["skipped_batches"] for w in self.windows
                          if w["restored_step"] <= step)

    def recover(self, bad_step, loss, grad_norm, last_saved, start_step, restore):
        """Handles the non-finite step `bad_step`; returns the step restored by `restore(path)`.

        `last_saved` is the step of this process's last save, `start_step` the step it started
        (or last recovered) at.
        """
        model_dir = self.model_dir
        deleted = None
        if last_saved == bad_step - 1 and bad_step - 1 > start_step:
            deleted = bad_step - 1
            if self.chief:
                checkpoints.discard(model_dir, os.path.join(model_dir, f"ckpt-{deleted}"))
        candidates = [s for s in run_dir.checkpoint_steps(model_dir)
                      if s < bad_step and s != deleted]
        kept = os.path.join(model_dir, f"ckpt-{candidates[0]}") if candidates else None
        what = (f"Non-finite training loss ({loss}) or gradient norm ({grad_norm}) at step "
                f"{bad_step}; stopped without applying or saving this step. "
                + (f"A checkpoint of step {bad_step - 1} held the weights that gave this loss; "
                   "it was deleted. " if deleted is not None else ""))
        if self.used >= self.max_recoveries or kept is None:
            used = (f"--max_recoveries={self.max_recoveries}: "
                    + (f"{self.used} recoveries in this process were used up. "
                       if self.used >= self.max_recoveries else "no checkpoint to recover from. ")
                    if self.max_recoveries else "")
            raise NonFiniteLossError(
                what + used + f"The last good checkpoint is kept: {kept or 'none was written yet'}."
                " Lower --learning_rate, raise --warmup_steps or set --global_clipnorm, then "
                "restart from it.")
        self.used += 1
        logging.warning("%sRecovery %d of --max_recoveries=%d: restoring the newest finite "
                        "checkpoint.", what, self.used, self.max_recoveries)
        restored = run_dir.restore_newest(candidates, restore, model_dir)
        window = dict(restored_step=restored, failed_step=bad_step,
                      skipped_batches=bad_step - restored, loss=str(loss),
                      grad_norm=str(grad_norm))
        self.windows.append(window)
        if self.chief:
            run_dir.write_atomically(self.path, json.dumps(self.windows, indent=1))
        logging.warning("Recovered: resumed from ckpt-%d; skipping the %d input batch(es) that "
                        "steps %d-%d read (recorded in %s).", restored, bad_step - restored,
                        restored + 1, bad_step, self.path)
        return restored
