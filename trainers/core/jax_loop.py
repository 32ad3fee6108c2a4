"""The training loop on the JAX backend: keras.distribution layouts, many steps per host call.

`trainers.core.loop.run` hands a task here when `KERAS_BACKEND=jax`. The flags, tasks,
tf.data pipelines, schedule, AdamW, summaries and checkpoint keys are the TensorFlow loop's;
what differs is what JAX does natively:

- `--strategy` picks a `keras.distribution`: none (one device), `DataParallel` over every
  device, or `ModelParallel` with the backbone's `get_layout_map` on a ("batch", "model")
  mesh. Variables are created as global `jax.Array`s with those layouts.
- One `jax.jit` computes the loss of the whole global batch (sum over the batch / global
  weight, as the TF loop's all-reduced normaliser gives); XLA's SPMD partitioner inserts the
  collectives, so there is no hand-written all-reduce.
- `--steps_per_loop=N` runs N steps in one call, a `jax.lax.fori_loop` over N stacked batches; the
  per-step losses come back stacked, so logs, metrics.jsonl and the NaN check still see every
  step, at the loop boundary. Checkpoints, evaluation and export happen at loop boundaries.
- Batches come from the same tf.data pipeline as numpy arrays (as keras-hub feeds JAX). With
  `--multi_host` each process's pipeline reads only its share of every global batch
  (`--per_worker_input`, element-level sharding as in the TF loop's workers) and
  `jax.make_array_from_process_local_data` assembles the global batch from the shares; process
  p > 0 keeps its iterator in `MODEL_DIR/input_worker_<p>/`, as a TF worker does.
- Checkpoints use TensorFlow's checkpoint format and the TF loop's variable keys
  (`model/<key>`, `optimizer/<key>`, the tf.data iterator), written by process 0 through
  `tf.train.CheckpointManager`, whose index file is replaced atomically: a run killed while
  saving resumes from the previous checkpoint. A backbone in such a checkpoint initialises a
  fine-tuning run on either backend.
- `--export_dir` rebuilds the model from the last checkpoint in a child process on the
  TensorFlow backend, which writes the same SavedModel a TF-trained run gives.
- MODEL_DIR/preset (`trainers.core.preset`) is written by process 0 itself when it holds every
  weight (one process), else by that TensorFlow child from the final checkpoint.
"""

import math
import os
import time

import jax
import keras
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from keras_gmlp import models
from keras_gmlp.models import layout as layout_lib
from trainers.core import checkpoints
from trainers.core import controller
from trainers.core import flags as flags_lib
from trainers.core import optimization
from trainers.core import preset
from trainers.core import run_dir
from trainers.core import tf_child
from trainers.core.controller import NonFiniteLossError
from trainers.core.summaries import ProgressLog

def make_distribution(strategy, model_parallel_size=0, backbone_class=None):
    """The `keras.distribution.Distribution` for `--strategy` on JAX, or None for one device.

    Args:
        strategy: "default"/"one_device" (None), "data_parallel", "model_parallel" or "tpu".
        model_parallel_size: devices on the mesh's "model" axis for "model_parallel"; 0 means
            every device of one host.
        backbone_class: provides `get_layout_map(mesh, model_parallel_dim_name,
            data_parallel_dim_name)`; without one, `keras_gmlp.models.layout.get_layout_map`.
    """
    if strategy in ("default", "one_device"):
        return None
    if strategy == "tpu":
        if jax.devices()[0].platform != "tpu":
            raise ValueError(
                f"--strategy=tpu: JAX sees no TPU (its devices are {jax.devices()}); on a TPU VM "
                "install the tpu extra (pip install -e \".[tpu]\").")
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    if strategy == "data_parallel":
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    if strategy == "model_parallel":
        devices = keras.distribution.list_devices()
        size = model_parallel_size or jax.local_device_count()
        if size > len(devices) or len(devices) % size:
            raise ValueError(
                f"--model_parallel_size={model_parallel_size}: expected a divisor of the "
                f"{len(devices)} devices.")
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // size, size), ("batch", "model"), devices)
        get_layout_map = (getattr(backbone_class, "get_layout_map", None)
                          or layout_lib.get_layout_map)
        layout_map = get_layout_map(mesh, model_parallel_dim_name="model",
                                    data_parallel_dim_name="batch")
        return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    raise ValueError(f"--strategy={strategy}: expected one of {list(flags_lib.JAX_STRATEGIES)} "
                     "with KERAS_BACKEND=jax.")


def data_parallel_size(distribution):
    """How many ways the batch dimension is split."""
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)]


def describe_layout(model):
    """One line: how many of the model's weights (and their values) are split over devices."""
    split = [v for v in model.weights if any(v.value.sharding.spec)]
    values = sum(math.prod(v.shape) for v in model.weights)
    split_values = sum(math.prod(v.shape) for v in split)
    return (f"{len(split)} of {len(model.weights)} weights split over devices "
            f"({split_values / max(values, 1):.0%} of the parameters)")


def _backbone_class(task):
    vision = task.default_model in models.VISION_PRESETS
    return models.GMLPVisionBackbone if vision else models.GMLPBackbone


def _initialize_multi_host():
    # Before anything asks JAX for its devices. Keras reads its KERAS_DISTRIBUTION_* variables;
    # without them JAX detects a Cloud TPU slice (or a SLURM, Open MPI or Kubernetes job).
    try:
        keras.distribution.initialize()
    except ValueError as error:
        raise ValueError(
            f"--multi_host: jax.distributed.initialize() found no cluster to join ({error}). "
            "On a Cloud TPU slice JAX finds the other hosts itself; elsewhere (e.g. several "
            "CPU or GPU processes) set KERAS_DISTRIBUTION_JOB_ADDRESSES=<process 0's host:port>, "
            "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID in every "
            "process's environment.") from error


def _sync(name):
    # Every process reaches this point before any goes on (a no-op in one process).
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def input_pipelines(distribution, global_batch_size, per_worker_input):
    """(count, index) of the input pipelines and this process's: one per process or one.

    Each process reads only its share of every global batch when the data layout gives each
    process one block of rows, process p the p-th (data-parallel meshes over every device);
    otherwise (one process, `--noper_worker_input`, a "model" axis across processes) every
    process reads whole global batches and keeps the rows its devices hold.
    """
    count, index = jax.process_count(), jax.process_index()
    if count == 1 or not per_worker_input or distribution is None:
        return 1, 0
    layout = distribution.get_data_layout((global_batch_size,))
    sharding = jax.sharding.NamedSharding(layout.device_mesh.backend_mesh,
                                          jax.sharding.PartitionSpec(*layout.axes))
    blocks = {s[0].indices(global_batch_size)[:2]
              for s in sharding.addressable_devices_indices_map((global_batch_size,)).values()}
    share = global_batch_size // count
    if (min(b[0] for b in blocks), max(b[1] for b in blocks)) != (index * share,
                                                                (index + 1) * share):
        return 1, 0
    return count, index


def _set_cpu_devices(count):
    # Mirrors --num_cpu_devices of the TF loop; only possible before JAX starts its backends.
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError as error:
            raise RuntimeError(f"--num_cpu_devices={count}: JAX already initialised its "
                               "devices; set XLA_FLAGS=--xla_force_host_platform_device_count="
                               f"{count} instead.") from error


class Trainer:
    """The model's state as jax arrays, the compiled loops, and the host-side data feed."""

    def __init__(self, task, model, optimizer, distribution, clipnorm, pipelines=1):
        self.task = task
        self.model = model
        self.optimizer = optimizer
        self.distribution = distribution
        self.clipnorm = float(clipnorm)
        self.pipelines = pipelines
        self._train = jax.jit(self._train_loop, donate_argnums=0,
                              out_shardings=(self._state_shardings(), None))
        self._eval = jax.jit(self._eval_step)

    # ---- state -------------------------------------------------------------------------
    def state(self):
        """(trainable, non-trainable, optimizer) values, as the compiled loop takes them."""
        state = ([v.value for v in self.model.trainable_variables],
                 [v.value for v in self.model.non_trainable_variables],
                 [v.value for v in self.optimizer.variables])
        if self.distribution is None:
            # Committed to the device like the loop's outputs, or the second call recompiles.
            state = jax.device_put(state, jax.devices()[0])
        return state

    def set_state(self, state):
        trainable, non_trainable, optimizer_values = state
        for variable, value in zip(self.model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, non_trainable):
            variable.assign(value)
        for variable, value in zip(self.optimizer.variables, optimizer_values):
            variable.assign(value)

    def _state_shardings(self):
        if self.distribution is None:
            return None
        return jax.tree_util.tree_map(lambda value: value.sharding, self.state())

    # ---- the compiled functions --------------------------------------------------------
    def _loss_terms(self, trainable, non_trainable, batch, training):
        model = self.model
        mapping = list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss_sum, normaliser, sums = self.task.loss_terms(model, batch, training=training)
        non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
        return loss_sum, normaliser, sums, non_trainable

    def _train_step(self, state, batch):
        trainable, non_trainable, optimizer_values = state

        def loss_fn(trainable_values):
            loss_sum, normaliser, sums, new_non_trainable = self._loss_terms(
                trainable_values, non_trainable, batch, training=True)
            # The batch is the global batch: this is the TF loop's all-reduced normalisation.
            loss = (keras.ops.cast(loss_sum, "float32")
                    / keras.ops.maximum(keras.ops.cast(normaliser, "float32"), 1e-12))
            return loss, (sums, new_non_trainable)

        (loss, (sums, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable)
        grad_norm = jax.numpy.sqrt(sum(
            jax.numpy.sum(jax.numpy.square(g.astype("float32"))) for g in grads))
        if self.clipnorm > 0:
            # tf.clip_by_global_norm: g * clipnorm / max(norm, clipnorm).
            scale = self.clipnorm / jax.numpy.maximum(grad_norm, self.clipnorm)
            grads = [(g * scale).astype(g.dtype) for g in grads]
        new_trainable, new_optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable)
        # A non-finite update is never applied (as in the TF loop): the state stays the one
        # that gave this loss, and the host stops at the loop boundary.
        finite = jax.numpy.isfinite(loss) & jax.numpy.isfinite(grad_norm)
        keep = lambda new, old: jax.numpy.where(finite, new, old)  # noqa: E731
        trainable = jax.tree_util.tree_map(keep, new_trainable, trainable)
        optimizer_values = jax.tree_util.tree_map(keep, new_optimizer_values, optimizer_values)
        sums = {key: keras.ops.cast(value, "float32") for key, value in sums.items()}
        return (trainable, non_trainable, optimizer_values), (loss, sums, grad_norm)

    def _train_loop(self, state, batches, count):
        """`count` steps over the first `count` of the stacked `batches`, in one call.

        `count` is traced, so one compilation serves a shorter last loop (its padding
        batches are never read). Returns the state and per-step (loss, sums, grad_norm)
        stacked, with zeros past `count`.
        """
        def batch_at(i):
            return jax.tree_util.tree_map(
                lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False), batches)

        size = jax.tree_util.tree_leaves(batches)[0].shape[0]
        shapes = jax.eval_shape(self._train_step, state, batch_at(0))[1]
        outputs = jax.tree_util.tree_map(
            lambda s: jax.numpy.zeros((size,) + s.shape, s.dtype), shapes)

        def body(i, carry):
            state, outputs = carry
            state, step_outputs = self._train_step(state, batch_at(i))
            outputs = jax.tree_util.tree_map(lambda o, v: o.at[i].set(v), outputs,
                                             step_outputs)
            return state, outputs

        return jax.lax.fori_loop(0, count, body, (state, outputs))

    def _eval_step(self, state, batch):
        trainable, non_trainable, _ = state
        _, _, sums, _ = self._loss_terms(trainable, non_trainable, batch, training=False)
        return {key: keras.ops.cast(value, "float32") for key, value in sums.items()}

    def lower_train_loop(self, state, batches, count):
        """The jitted loop lowered for these arguments (for inspecting its HLO)."""
        return self._train.lower(state, batches, np.int32(count))

    def train(self, state, batches, count):
        """Runs `count` steps; returns the new state and host numpy (loss, sums, norm)."""
        state, outputs = self._train(state, batches, np.int32(count))
        return state, jax.tree_util.tree_map(np.asarray, jax.device_get(outputs))

    def evaluate_batch(self, state, batch):
        return {k: float(v) for k, v in jax.device_get(self._eval(state, batch)).items()}

    # ---- data --------------------------------------------------------------------------
    def _sharding(self, shape, stacked, shard_batch):
        if self.distribution is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        layout = self.distribution.get_data_layout(shape[1:] if stacked else shape)
        axes = list(layout.axes) if shard_batch else [None] * len(layout.axes)
        if stacked:
            axes = [None] + axes
        return jax.sharding.NamedSharding(layout.device_mesh.backend_mesh,
                                          jax.sharding.PartitionSpec(*axes))

    def device_batch(self, host_batch, stacked, share=False):
        """Global jax arrays from numpy batches, split over the devices by rows.

        `host_batch` is a global batch, or with `share` this process's pipeline's share of one
        (`pipelines` > 1). A global batch whose rows do not split evenly (the last evaluation
        batch) is replicated.
        """
        axis = 1 if stacked else 0
        rows = jax.tree_util.tree_leaves(host_batch)[0].shape[axis]
        if share:
            rows *= self.pipelines
        shard = rows % data_parallel_size(self.distribution) == 0

        def put(array):
            array = _jax_dtype(array)
            shape = array.shape[:axis] + (rows,) + array.shape[axis + 1:]
            sharding = self._sharding(shape, stacked, shard)
            if self.distribution is None:
                return jax.device_put(array, sharding)
            if share and self.pipelines > 1:
                return jax.make_array_from_process_local_data(sharding, array, shape)
            # Every process holds the whole batch: each device takes its rows from it.
            return jax.make_array_from_callback(shape, sharding, lambda index: array[index])

        return jax.tree_util.tree_map(put, host_batch)


def _jax_dtype(array):
    # JAX runs without 64-bit types by default; narrow them here rather than on every call.
    array = np.asarray(array)
    if array.dtype == np.int64:
        return array.astype(np.int32)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


def _numpy(batch):
    return tf.nest.map_structure(lambda t: t.numpy(), batch)


def _to_host(value):
    if value.is_fully_addressable:
        return np.asarray(value)
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def load_model_weights(model, checkpoint_path):
    """Reads every variable of `model` from a trainer checkpoint (either loop's), by key."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    for key, variable in zip(checkpoints.checkpoint_keys(model.variables), model.variables):
        variable.assign(reader.get_tensor(f"model/{key}/.ATTRIBUTES/VARIABLE_VALUE"))


class Checkpointer:
    """model/optimizer/step/iterator in TensorFlow's checkpoint format, from jax values.

    Keras variables on JAX are not TensorFlow trackables, so each is mirrored by a host
    tf.Variable under the TF loop's key; process 0 writes, every process reads. With one input
    pipeline per process (`pipelines` > 1), process p > 0 keeps its `iterator` in
    `MODEL_DIR/input_worker_<p>/ckpt-<step>` (the TF loop's layout), written before process 0
    writes that step's checkpoint, so the latest checkpoint always has every process's iterator.
    """

    def __init__(self, model, optimizer, iterator, directory, keep, is_chief, pipelines=1):
        self.variables = list(model.variables)
        self.optimizer_variables = list(optimizer.variables)
        self.is_chief = is_chief
        self.directory = directory
        self.pipelines = pipelines
        self.saves_iterator = iterator is not None
        self.input_manager = None
        if iterator is not None and pipelines > 1 and jax.process_index() > 0:
            self.input_manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(iterator=iterator),
                controller.worker_input_dir(directory, jax.process_index()), max_to_keep=keep)
            iterator = None

        def mirrors(variables):
            return [tf.Variable(np.zeros(v.shape, _jax_dtype(np.zeros((), v.dtype)).dtype),
                                trainable=False) for v in variables]

        self.mirrors = mirrors(self.variables)
        self.optimizer_mirrors = mirrors(self.optimizer_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        parts = dict(
            model=tf.train.Checkpoint(**dict(zip(
                checkpoints.checkpoint_keys(self.variables), self.mirrors))),
            optimizer=tf.train.Checkpoint(**dict(zip(
                checkpoints.checkpoint_keys(self.optimizer_variables), self.optimizer_mirrors))),
            step=self.step)
        if iterator is not None:
            parts["iterator"] = iterator
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.keep = keep
        self.reopen()

    def reopen(self):
        """Reads MODEL_DIR/checkpoint again (after a recovery deleted a checkpoint)."""
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=self.keep, step_counter=self.step)

    def save(self, step):
        if self.input_manager is not None:
            self.input_manager.save(checkpoint_number=step)
        if self.pipelines > 1 and self.saves_iterator:
            _sync(f"input iterators of step {step} saved")
        # Every process takes part in gathering sharded values; only process 0 writes.
        values = [_to_host(v.value) for v in self.variables + self.optimizer_variables]
        if not self.is_chief:
            return None
        for mirror, value in zip(self.mirrors + self.optimizer_mirrors, values):
            mirror.assign(value.astype(mirror.dtype.as_numpy_dtype))
        self.step.assign(step)
        return self.manager.save(checkpoint_number=step)

    def restore(self, path):
        if self.saves_iterator:
            controller.check_worker_inputs(self.directory, path, self.pipelines)
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except AssertionError as error:
            raise ValueError(
                f"{path}: this checkpoint does not hold this model's and optimizer's variables "
                "under the JAX loop's keys (a run of another model, or one trained with "
                "KERAS_BACKEND=tensorflow, cannot be resumed on JAX).") from error
        if self.input_manager is not None:
            self.input_manager.checkpoint.restore(controller.worker_input_path(
                self.directory, jax.process_index(), path)).assert_consumed()
        for variable, mirror in zip(self.variables + self.optimizer_variables,
                                    self.mirrors + self.optimizer_mirrors):
            variable.assign(mirror.numpy())
        return int(self.step.numpy())


def run(task, preemption):
    """Trains `task` on the JAX backend per its flags; returns the final evaluation metrics.

    `preemption` is the run's `controller.Preemption`.

    The run directory is handled as by the TensorFlow loop (`trainers.core.run_dir`): process
    0 holds its lock, partial saves are removed, an existing run is compared with these flags
    and restored from its newest checkpoint that restores before anything is written.
    """
    fv = task.flags
    _set_cpu_devices(fv.num_cpu_devices)
    if fv.multi_host:
        _initialize_multi_host()
        preemption.install()  # jax.distributed's coordination service took SIGTERM
    if fv.mixed_precision != "float32":
        keras.config.set_dtype_policy(fv.mixed_precision)
    distribution = make_distribution(fv.strategy, fv.model_parallel_size, _backbone_class(task))
    replicas = data_parallel_size(distribution)  # the mesh spans every process's devices
    if fv.global_batch_size % replicas:
        raise ValueError(
            f"--global_batch_size={fv.global_batch_size}: expected a multiple of "
            f"{replicas} (the data-parallel devices of --strategy={fv.strategy}).")
    chief = jax.process_index() == 0
    logging.info("JAX backend, %s on %d device(s) in %d process(es).",
                 type(distribution).__name__ if distribution else "one device",
                 len(jax.devices()) if distribution else 1, jax.process_count())
    lock = run_dir.RunDirLock(fv.model_dir).acquire() if chief else None
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        return _run(task, distribution, chief, preemption)
    finally:
        keras.distribution.set_distribution(previous)
        if lock is not None:
            lock.release()


def _run(task, distribution, chief, preemption):
    fv = task.flags
    model_dir = fv.model_dir
    if chief:
        run_dir.remove_partial_saves(model_dir)
    _sync("model_dir cleaned")  # every process then finds the same checkpoints
    found = run_dir.checkpoint_steps(model_dir)
    task.prepare(model_dir, chief)
    keras.utils.set_random_seed(fv.seed)
    model = task.build_model()
    schedule = optimization.WarmupDecay(
        fv.learning_rate, fv.train_steps, fv.warmup_steps, fv.decay, fv.end_learning_rate_ratio)
    optimizer = optimization.make_optimizer(fv, schedule)
    optimizer.build(model.trainable_variables)
    logging.info("Model %s: %s parameters.", model.name, f"{model.count_params():,}")
    if distribution is not None:
        logging.info("Mesh %s: %s", dict(zip(distribution.device_mesh.axis_names,
                                             distribution.device_mesh.shape)),
                     describe_layout(model))
    backbone_config = (keras.saving.serialize_keras_object(model.backbone)
                       if hasattr(model, "backbone") else None)
    pipelines, pipeline = input_pipelines(distribution, fv.global_batch_size,
                                          fv.per_worker_input)
    context = tf.distribute.InputContext(pipelines, pipeline, data_parallel_size(distribution))
    train_ds = task.train_dataset(fv.global_batch_size // pipelines,
                                  context if pipelines > 1 else None)
    logging.info("Input: this process's pipeline (%d of %d) reads %d of every %d examples.",
                 pipeline, pipelines, fv.global_batch_size // pipelines, fv.global_batch_size)
    iterator = iter(train_ds) if fv.checkpoint_iterator else None
    checkpointer = Checkpointer(model, optimizer, iterator, model_dir, fv.keep_checkpoints + 1,
                                chief, pipelines)
    resumed = None
    step = 0
    if found:
        controller.compare_with_stored_run(task, backbone_config, fv.checkpoint_iterator)
        resumed = run_dir.restore_newest(found, checkpointer.restore, model_dir)
        if jax.process_count() > 1:
            multihost_utils.assert_equal(resumed, "The processes restored different checkpoints")
        step = resumed
        logging.info("Resumed from %s at step %d.", os.path.join(model_dir, f"ckpt-{resumed}"),
                     step)
    else:
        task.initialize_from_pretrained(model)
    if chief:
        controller.write_run_files(task, backbone_config, found, resumed)
    recovery = controller.Recovery(model_dir, fv.max_recoveries, chief, resumed is not None)
    saves_iterator = iterator is not None

    def position_input(step):
        # After restoring `step` (or at 0): past the batches used, and past skipped windows.
        nonlocal iterator
        skip = recovery.input_skip(step, saves_iterator)
        if saves_iterator:
            for _ in range(skip):
                next(iterator)
        else:
            iterator = iter(train_ds.skip(skip))

    position_input(step)
    agree = None
    if jax.process_count() > 1:
        def agree(counts):
            return np.sum(multihost_utils.process_allgather(np.asarray(counts, np.int32)), 0)
    eval_ds = task.eval_dataset(fv.global_batch_size)
    trainer = Trainer(task, model, optimizer, distribution, fv.global_clipnorm, pipelines)
    state = trainer.state()
    log = ProgressLog(model_dir, chief, fv.train_steps, fv.global_batch_size)
    start_step = step
    last_saved = resumed
    eval_metrics = {}
    log.start(step)
    while step < fv.train_steps:
        count = controller.loop_length(step, start_step, fv, every_step_reported=True)
        host = [_numpy(next(iterator)) for _ in range(count)]
        host += [jax.tree_util.tree_map(np.zeros_like, host[0])] * (fv.steps_per_loop - count)
        batches = trainer.device_batch(
            jax.tree_util.tree_map(lambda *rows: np.stack(rows), *host), stacked=True,
            share=True)
        loop_start = time.perf_counter()
        state, (losses, sums, grad_norms) = trainer.train(state, batches, count)
        loop_end = time.perf_counter()
        bad = [i for i in range(count)
               if not (math.isfinite(float(losses[i])) and math.isfinite(float(grad_norms[i])))]
        if bad:
            # Nothing of this loop is kept: the state goes back to a checkpoint (or the run
            # stops, keeping the last good one).
            i = bad[0]
            try:
                step = recovery.recover(step + i + 1, float(losses[i]), float(grad_norms[i]),
                                        last_saved, start_step, checkpointer.restore)
            except NonFiniteLossError:
                log.close()
                raise
            state = trainer.state()
            start_step = last_saved = step
            position_input(step)
            checkpointer.reopen()  # reads the state file the recovery left
            log.start(step)
            continue
        for i in range(count):
            done = step + i + 1
            log.accumulate({key: float(value[i]) for key, value in sums.items()})
            if done % fv.log_every == 0 or done in (start_step + 1, fv.train_steps):
                # Steps inside one call finish at evenly spread times, for steps/s.
                finished = loop_start + (loop_end - loop_start) * (i + 1) / count
                log.write(done, float(losses[i]), float(schedule(done - 1)),
                          float(grad_norms[i]), task.metrics, now=finished)
        step += count
        if step % fv.checkpoint_every == 0 or step == fv.train_steps:
            trainer.set_state(state)
            state = trainer.state()
            checkpointer.save(step)
            last_saved = step
        if fv.eval_every and step % fv.eval_every == 0 and step != fv.train_steps:
            eval_metrics = _evaluate(trainer, state, eval_ds, fv, log, step)
            log.restart_clock()

        def save_now():
            if last_saved == step:
                return checkpointer.manager.latest_checkpoint
            trainer.set_state(state)
            return checkpointer.save(step)

        try:
            preemption.preempted(step, save_now, agree)
        except controller.Preempted:
            log.close()
            raise
    trainer.set_state(state)
    if step > start_step or not eval_metrics:
        eval_metrics = _evaluate(trainer, trainer.state(), eval_ds, fv, log, step)
    if chief:
        checkpoints.keep_newest(model_dir, fv.keep_checkpoints)
    logging.info("Finished at step %d (last checkpoint: step %s).", step, last_saved)
    # One process holds every weight whole, so it can save the preset itself; across hosts the
    # weights are split between processes, and a TensorFlow child rebuilds the model from the
    # final checkpoint (as for the export) and writes it.
    preset_here = chief and jax.process_count() == 1
    if preset_here:
        preset.write_preset(model, task.preprocessor(), model_dir)
    outputs = ([] if preset_here else [tf_child.PRESET]) + (
        [tf_child.EXPORT] if fv.export_dir else [])
    if chief and outputs:
        paths = tf_child.write_with_tensorflow(task, tf.train.latest_checkpoint(model_dir), outputs)
        for output, path in zip(outputs, paths):
            if output == tf_child.EXPORT:
                logging.info("Exported a SavedModel to %s", path)
            else:
                logging.info("Wrote the preset directory %s", path)
    log.close()
    return eval_metrics


def _evaluate(trainer, state, dataset, fv, log, step):
    if dataset is None:
        return {}
    totals = {}
    batches = 0
    for batch in dataset:
        sums = trainer.evaluate_batch(state, trainer.device_batch(_numpy(batch), stacked=False))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + value
        batches += 1
        if fv.eval_steps and batches >= fv.eval_steps:
            break
    if not batches:
        raise ValueError("The evaluation dataset yielded no batch.")
    metrics = trainer.task.metrics(totals)
    log.write_eval(step, metrics, batches)
    return metrics
