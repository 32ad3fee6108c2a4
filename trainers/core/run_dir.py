"""A trainer's model_dir: its lock, the choice of checkpoint to resume, the stored settings.

Backend-neutral (no tf.function; paths through `tf.io.gfile`, so local, gs:// and ram:// work
alike), for every training loop:

    with RunDirLock(model_dir):                       # one writer per model_dir
        remove_partial_saves(model_dir)               # ckpt-N_temp/, preset stages of killed saves
        steps = checkpoint_steps(model_dir)           # what exists, newest first
        if steps:
            compare_settings(stored_settings(model_dir), given, model_dir)
            step = restore_newest(steps, restore_fn, model_dir)
        ...                                           # only now write into model_dir

Nothing here writes into model_dir except the lock file and the removal of partial saves.
"""

import json
import os
import re
import socket
import sys
import threading
import time
import uuid

import tensorflow as tf
from absl import logging

from absl import flags

from trainers.core import flags as flags_lib

LOCK_FILE = ".lock"
FLAGS_FILE = "flags.txt"
FLAGS_JSON = "flags.json"
RECOVERIES_FILE = "recoveries.json"
STATE_FILE = "checkpoint"
MODEL_CONFIG_FILE = "model_config.json"
VOCAB_FILE = "vocab.txt"
PRESET_DIR = "preset"
CHECKPOINT_PREFIX = "ckpt"


class RunDirError(RuntimeError):
    """The model_dir cannot be used as asked; the message says why and what to do."""


class RunDirLocked(RunDirError):
    """Another live trainer holds the model_dir's lock."""


def _is_local(path):
    return "://" not in path or path.startswith("file://")


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirLock:
    """An exclusive lock on `model_dir` (MODEL_DIR/.lock), held while a trainer writes there.

    Local paths use `fcntl.flock`, which the kernel releases when the holder exits in any
    way, SIGKILL included, so a dead holder never blocks the next run. Other file systems
    (gs://, ram://) get an exclusive create through `tf.io.gfile.rename(overwrite=False)` and a
    heartbeat: the holder rewrites the file every `heartbeat_s`; a lock whose heartbeat is
    older than `stale_after_s`, or whose holder is a dead process on this host, is taken over
    with a warning. (Object stores have no atomic create-if-absent through tf.io.gfile; two
    runs started within the same moment on gs:// can both win.)

    Raises `RunDirLocked` naming the holder (host, pid, start time, command).
    """

    def __init__(self, model_dir, stale_after_s=600.0, heartbeat_s=60.0):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self._fd = None
        self._stop = None
        self._thread = None

    def _holder(self):
        return dict(host=socket.gethostname(), pid=os.getpid(), token=self.token,
                    started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), heartbeat=time.time(),
                    command=" ".join(sys.argv))

    def _refused(self, holder):
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started "
               f"{holder.get('started')}: {holder.get('command', '')[:200]}"
               if holder else "a process whose details are unreadable")
        return RunDirLocked(
            f"--model_dir={self.model_dir}: in use by another trainer ({who}). Two trainers "
            f"on one model_dir would overwrite each other's checkpoints; wait for that run "
            f"to finish or stop it, or use another --model_dir. (Lock file: {self.path}.)")

    def acquire(self):
        """Takes the lock (creating model_dir if needed); returns self."""
        tf.io.gfile.makedirs(self.model_dir)
        if _is_local(self.path):
            self._acquire_local(self.path.removeprefix("file://"))
        else:
            self._acquire_remote()
        return self

    def _acquire_local(self, path):
        import fcntl  # here: POSIX only, and only local model_dirs need it

        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(f"--model_dir={self.model_dir}: cannot be written "
                              f"({error}).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd) as f:
                raise self._refused(_parse(f.read())) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._holder()).encode(), 0)
        self._fd = fd

    def _acquire_remote(self):
        for attempt in range(2):
            # Not "<lock>.<token>": ram:// takes any path with the lock's name as a prefix
            # for the lock itself.
            staging = os.path.join(self.model_dir, f".staging-{self.token}")
            with tf.io.gfile.GFile(staging, "w") as f:
                f.write(json.dumps(self._holder()))
            try:
                tf.io.gfile.rename(staging, self.path, overwrite=False)
                break
            except tf.errors.OpError:
                tf.io.gfile.remove(staging)
            holder = self._read()
            if attempt or not self._stale(holder):
                raise self._refused(holder)
            logging.warning("Taking over the stale lock %s (holder %s).", self.path, holder)
            tf.io.gfile.remove(self.path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            with tf.io.gfile.GFile(self.path) as f:
                return _parse(f.read())
        except tf.errors.NotFoundError:
            return None

    def _stale(self, holder):
        if not holder:
            return False  # being written right now, or not ours to judge
        if holder.get("host") == socket.gethostname() and not _process_alive(holder["pid"]):
            return True
        return time.time() - holder.get("heartbeat", 0) > self.stale_after_s

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if not holder or holder.get("token") != self.token:
                logging.error("The lock %s was taken over by %s.", self.path, holder)
                return
            holder["heartbeat"] = time.time()
            write_atomically(self.path, json.dumps(holder))

    def release(self):
        """Gives the lock up (idempotent)."""
        if self._fd is not None:
            import fcntl  # here: POSIX only, and only local model_dirs need it

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            holder = self._read()
            if holder and holder.get("token") == self.token:
                tf.io.gfile.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def _parse(text):
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def remove_partial_saves(model_dir, prefix=CHECKPOINT_PREFIX):
    """Deletes `<prefix>-N_temp*` and preset stages left by saves that were killed; returns
    their names.

    Only safe while the lock is held: a live trainer's save in progress looks the same.
    """
    removed = []
    # A preset write killed between its two renames left the previous preset retired: put it
    # back (trainers.core.preset stages and retires under these names).
    preset = os.path.join(model_dir, PRESET_DIR)
    for path in tf.io.gfile.glob(os.path.join(model_dir, f".{PRESET_DIR}-retired-*")):
        if not tf.io.gfile.exists(preset):
            tf.io.gfile.rename(path, preset)
            logging.warning("Restored %s from an interrupted preset write.", preset)
    stale = tf.io.gfile.glob(os.path.join(model_dir, f".{PRESET_DIR}-staging-*"))
    stale += tf.io.gfile.glob(os.path.join(model_dir, f".{PRESET_DIR}-retired-*"))
    for path in stale + tf.io.gfile.glob(os.path.join(model_dir, f"{prefix}-*_temp*")):
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
        removed.append(os.path.basename(path))
    if removed:
        logging.warning("Removed the leftovers of interrupted checkpoint saves in %s: %s",
                        model_dir, ", ".join(sorted(removed)))
    return removed


def read_state(model_dir):
    """The checkpoint names (newest last) listed in MODEL_DIR/checkpoint; [] if unreadable."""
    path = os.path.join(model_dir, STATE_FILE)
    try:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    except (tf.errors.OpError, UnicodeDecodeError):
        return []
    names = re.findall(r'^\s*all_model_checkpoint_paths:\s*"([^"]+)"', text, re.M)
    latest = re.findall(r'^\s*model_checkpoint_path:\s*"([^"]+)"', text, re.M)[:1]
    names = [os.path.basename(n) for n in names if n not in latest] + [
        os.path.basename(n) for n in latest]
    return list(dict.fromkeys(names))


def write_state(model_dir, names):
    """Writes MODEL_DIR/checkpoint (as tf.train.CheckpointManager does) naming `names`.

    `names` are relative checkpoint prefixes, oldest first; the last is the latest.
    """
    # CheckpointManager only rotates entries whose timestamps are newer than the last
    # preserved one, so both are written.
    now = time.time()
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    lines += [f"all_model_checkpoint_timestamps: {now - len(names) + i:.6f}"
              for i in range(len(names))]
    lines.append(f"last_preserved_timestamp: {now - len(names) - 1:.6f}")
    write_atomically(os.path.join(model_dir, STATE_FILE), "\n".join(lines) + "\n")


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file and a rename (no half-written file)."""
    staging = os.path.join(os.path.dirname(path), f".staging-{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(staging, "w") as f:
        f.write(text)
    tf.io.gfile.rename(staging, path, overwrite=True)


def checkpoint_steps(model_dir, prefix=CHECKPOINT_PREFIX):
    """Steps N of every `<prefix>-N` checkpoint in model_dir, newest first.

    Read from the files themselves (an index or a data file, whichever survived) and from the
    checkpoint state file, so a lost or damaged state file or index hides no checkpoint.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)(\.index|\.data-\d+-of-\d+)?$")
    steps = set()
    names = [os.path.basename(p) for p in tf.io.gfile.glob(os.path.join(model_dir, f"{prefix}-*"))]
    for name in names + read_state(model_dir):
        match = pattern.match(name)
        if match:
            steps.add(int(match.group(1)))
    return sorted(steps, reverse=True)


def restore_newest(steps, restore, model_dir, prefix=CHECKPOINT_PREFIX):
    """Calls `restore(path)` on the newest checkpoint first, then older ones until one works.

    Logs a warning for each one skipped (with its error). Returns the step restored. Raises
    `RunDirError` naming every checkpoint and why it failed when none restores: the run never
    starts over while checkpoints exist.
    """
    failures = []
    for step in steps:
        path = os.path.join(model_dir, f"{prefix}-{step}")
        try:
            restore(path)
        except Exception as error:  # noqa: BLE001 - any failure means: try the next one
            reason = _first_line(error)
            failures.append(f"{prefix}-{step}: {reason}")
            logging.warning("Skipping checkpoint %s: it does not restore (%s).", path, reason)
            continue
        if failures:
            logging.warning("Resuming from %s, the newest checkpoint that restores; skipped %s.",
                            path, ", ".join(f.split(":")[0] for f in failures))
        return step
    raise RunDirError(
        f"--model_dir={model_dir}: holds checkpoints, but none of them restores:\n  "
        + "\n  ".join(failures)
        + "\nNothing was changed. To start a new run, use another --model_dir (or move these "
        f"{prefix}-* files and the '{STATE_FILE}' file out of this one).")


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def stored_settings(model_dir):
    """What a trainer run recorded in model_dir that a resumed run must match.

    Returns {key: value}: "backbone <argument>" for each backbone constructor argument in
    model_config.json, "vocabulary" (the tokens of vocab.txt), and "global_batch_size" and
    "checkpoint_iterator" from flags.json. Absent files give no keys.
    """
    settings = {}
    config = _read_json(os.path.join(model_dir, MODEL_CONFIG_FILE))
    if config:
        settings.update(backbone_settings(config))
    vocab = os.path.join(model_dir, VOCAB_FILE)
    if tf.io.gfile.exists(vocab):
        with tf.io.gfile.GFile(vocab, "rb") as f:
            tokens = f.read().decode("utf-8", "replace").splitlines()
        while tokens and not tokens[-1]:
            tokens.pop()
        settings["vocabulary"] = tokens
    flag_values = _read_json(os.path.join(model_dir, FLAGS_JSON)) or {}
    for name in ("global_batch_size", "checkpoint_iterator"):
        if name in flag_values:
            settings[name] = flag_values[name]
    return settings


def backbone_settings(serialized):
    """{"backbone <argument>": value} of a serialized backbone (as in model_config.json)."""
    config = json.loads(json.dumps(serialized.get("config", {}), default=str))
    return {f"backbone {key}": value for key, value in config.items()
            if key not in ("name", "trainable", "dtype")}


def _read_json(path):
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except ValueError as error:
        raise RunDirError(f"--model_dir: {path} is not valid JSON ({error}); it was written "
                          "by the run being resumed. Restore it, or use another "
                          "--model_dir.") from None


def compare_settings(stored, given, model_dir, sources=None):
    """Raises `RunDirError` listing every key of both dicts whose values differ.

    `sources` maps a key to the flag(s) that set it in this run, for the message.
    """
    sources = sources or {}
    lines = []
    for key in sorted(set(stored) & set(given)):
        if stored[key] != given[key]:
            old, new = _describe(stored[key], given[key])
            lines.append(f"{key}: {old} in the stored run, {new} from "
                         f"{sources.get(key, 'these flags')}")
    if lines:
        raise RunDirError(
            f"--model_dir={model_dir}: holds a run with other settings than these flags, so "
            "it cannot be resumed with them:\n  " + "\n  ".join(lines)
            + "\nNothing was changed. Resume it with its own settings (MODEL_DIR/flags.txt is "
            "a --flagfile of them), or use another --model_dir for a new run.")


def _describe(old, new):
    if isinstance(old, list) and isinstance(new, list) and len(old) + len(new) > 10:
        summary = [f"{len(old)} entries", f"{len(new)} entries"]
        for index, (a, b) in enumerate(zip(old, new)):
            if a != b:
                summary = [f"{s} (entry {index}: {v!r})" for s, v in zip(summary, (a, b))]
                break
        return summary
    return [repr(old), repr(new)]


def write_flags(model_dir, fv=flags.FLAGS):
    """Writes the flags of this run into model_dir: a --flagfile and a JSON copy.

    `python -m trainers.<trainer> --flagfile=MODEL_DIR/flags.txt` repeats the run.
    """
    ours = [m for m in fv.flags_by_module_dict() if "absl" not in m and "tensorflow" not in m]
    values = flags_lib.flag_dict(fv, ours)
    tf.io.gfile.makedirs(model_dir)
    lines = []
    for name in sorted(values):
        serialized = fv[name].serialize()
        if serialized:
            lines.append(serialized)
    write_atomically(os.path.join(model_dir, FLAGS_FILE), "\n".join(lines) + "\n")
    write_atomically(os.path.join(model_dir, FLAGS_JSON),
                     json.dumps(values, indent=2, sort_keys=True, default=str))
    return values
