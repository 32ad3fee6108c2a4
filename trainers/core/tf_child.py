"""The TensorFlow child process that writes a JAX run's preset and SavedModel.

`trainers.core.jax_loop` runs `python -m trainers.core.tf_child` with KERAS_BACKEND=tensorflow
when the export (or, across hosts, the preset) must come from the TensorFlow backend: the child
parses the run's flags file, rebuilds the task's model, reads the final checkpoint (the TF
loop's keys) and writes what was asked, as a TensorFlow-trained run does.
"""

import importlib
import os
import subprocess
import sys

import keras
import tensorflow as tf
from absl import flags

from trainers.core import checkpoints
from trainers.core import preset
from trainers.core import run_dir
from trainers.core.task import Task


def _trainer_module(task):
    module = sys.modules[type(task).__module__]
    spec = getattr(module, "__spec__", None)  # `python -m trainers.x` runs it as __main__
    return spec.name if spec is not None else module.__name__


PRESET, EXPORT = "preset", "export"


def write_with_tensorflow(task, checkpoint_path, outputs):
    """Writes `outputs` (`PRESET`: MODEL_DIR/preset, `EXPORT`: the task's SavedModel) from a
    child process on the TensorFlow backend; returns their paths.

    The child parses this run's flags file, rebuilds the task's model (`prepare` reads the
    vocabulary and configs the run left in MODEL_DIR), reads the weights from the checkpoint
    and calls `preset.write_preset` / `task.export`: the export is the one a TensorFlow-trained
    model gives.
    """
    fv = task.flags
    command = [sys.executable, "-m", "trainers.core.tf_child", _trainer_module(task),
               os.path.join(fv.model_dir, run_dir.FLAGS_FILE), checkpoint_path,
               ",".join(outputs)]
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        what = " and ".join("--export_dir" if o == EXPORT else "MODEL_DIR/preset" for o in outputs)
        raise RuntimeError(f"{what}: the TensorFlow process writing it failed "
                           f"(exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-len(outputs):]


def main(argv):
    """`python -m trainers.core.tf_child TRAINER_MODULE FLAGS_FILE CHECKPOINT OUTPUTS` (TF
    backend; OUTPUTS: comma-separated `preset`, `export`)."""
    module_name, flags_file, checkpoint_path, outputs = argv[1:]
    module = importlib.import_module(module_name)
    module.define_flags()
    fv = flags.FLAGS
    fv([argv[0], f"--flagfile={flags_file}", "--strategy=default", "--nomulti_host"])
    task_class, = [value for value in vars(module).values()
                   if isinstance(value, type) and issubclass(value, Task) and value is not Task
                   and value.__module__ == module.__name__]
    task = task_class(fv)
    task.prepare(fv.model_dir, False)
    if fv.mixed_precision != "float32":
        keras.config.set_dtype_policy(fv.mixed_precision)
    model = task.build_model()
    reader = tf.train.Checkpoint(model=checkpoints.model_tree(model))
    reader.restore(checkpoint_path).expect_partial().assert_existing_objects_matched()
    for output in outputs.split(","):
        if output == PRESET:
            print(preset.write_preset(model, task.preprocessor(), fv.model_dir))
        else:
            print(task.export(model, fv.export_dir))


if __name__ == "__main__":
    main(sys.argv)
