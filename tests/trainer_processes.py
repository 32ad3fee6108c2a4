"""Trainer subprocesses for the end-to-end tests: start, wait, read what they left."""

import itertools
import json
import os
import socket
import subprocess
import sys

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


class TrainerProcess:
    """A trainer process whose output goes to a file (pipes could fill and block it)."""

    def __init__(self, module, args, log_path, **env):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                                          env=_env(**env), stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout=900):
        self.popen.wait(timeout=timeout)
        with open(self.log_path) as f:
            return self.popen.returncode, f.read()


def free_ports(count):
    """`count` ports free on localhost now (for TF_CONFIG clusters of local workers)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_LOG_NUMBERS = itertools.count()


def start(module, args, **env):
    """Starts `python -m module args`; its log is MODEL_DIR.<n>.log beside the model_dir."""
    model_dir = next(a for a in args if a.startswith("--model_dir="))[len("--model_dir="):]
    return TrainerProcess(module, args, f"{model_dir}.{next(_LOG_NUMBERS)}.log", **env)


def run(module, args, expect_ok=True, timeout=900, **env):
    returncode, output = start(module, args, **env).wait(timeout)
    if expect_ok:
        assert returncode == 0, output[-4000:]
    return returncode, output


def losses(model_dir):
    """{step: loss} from metrics.jsonl; a resumed run's line for a step replaces the old one."""
    found = {}
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                found[record["step"]] = record["loss"]
    return found


def model_values(checkpoint_path):
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.startswith("model/")}
