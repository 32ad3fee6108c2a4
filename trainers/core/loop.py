"""The one training loop behind every trainer and every strategy.

A custom loop (as tf-models/Orbit do), not `model.fit`: Keras 3.15's fit fails under
MultiWorkerMirroredStrategy, while `strategy.run` inside a
`tf.function` works for default, one-device, mirrored, multi-worker and TPU strategies alike.
Each step: forward and loss on every replica, loss divided by a normaliser all-reduced over
replicas, gradients all-reduced once, clipped by their global norm, applied by AdamW.
"""

import os
import sys

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from trainers.core import checkpoints
from trainers.core import controller
from trainers.core import optimization
from trainers.core import preset
from trainers.core import run_dir
from trainers.core import strategy as strategy_lib
from trainers.core.controller import NON_FINITE_EXIT_CODE
from trainers.core.controller import NonFiniteLossError
from trainers.core.controller import Preempted
from trainers.core.controller import loop_length
from trainers.core.summaries import ProgressLog

SUM = tf.distribute.ReduceOp.SUM
MODEL_CONFIG_FILE = run_dir.MODEL_CONFIG_FILE


def main_for(task_class):
    """An `absl.app` main that trains `task_class(FLAGS)`.

    Exit codes: 0 done; 3 a non-finite loss with no recovery left (`--max_recoveries`); 143
    after SIGTERM and 130 after SIGINT, once a checkpoint of the current step is saved
    (`controller.Preempted`; the same command resumes from it).
    """

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            run(task_class(flags.FLAGS))
        except NonFiniteLossError as error:
            logging.error("%s", error)
            sys.exit(NON_FINITE_EXIT_CODE)
        except Preempted as preempted:
            logging.warning("%s", preempted)
            sys.exit(preempted.exit_code)

    return main


def run(task):
    """Trains `task` (a `trainers.core.task.Task`) per its flags; returns the final metrics.

    Raises `NonFiniteLossError` when a non-finite loss is left unrecovered, `Preempted` after
    SIGTERM/SIGINT (a checkpoint of the step reached is saved first).
    """
    with controller.Preemption() as preemption:
        if keras.backend.backend() == "jax":
            # Imported here: JAX is an optional extra (pip install -e ".[jax]").
            from trainers.core import jax_loop

            return jax_loop.run(task, preemption)
        return _run_tensorflow(task, preemption)


def _run_tensorflow(task, preemption):
    fv = task.flags
    model_dir = fv.model_dir
    if fv.strategy == "mirrored" and fv.num_cpu_devices > 1:
        strategy_lib.split_cpu(fv.num_cpu_devices)
    if fv.deterministic:
        tf.config.experimental.enable_op_determinism()
    if fv.mixed_precision != "float32":
        keras.config.set_dtype_policy(fv.mixed_precision)
    strategy = strategy_lib.make_strategy(fv.strategy, fv.tpu, fv.num_cpu_devices)
    preemption.install()  # MultiWorkerMirroredStrategy's coordination service took SIGTERM
    replicas = strategy.num_replicas_in_sync
    if fv.global_batch_size % replicas:
        raise ValueError(
            f"--global_batch_size={fv.global_batch_size}: expected a multiple of the "
            f"{replicas} replicas of --strategy={fv.strategy}.")
    chief = strategy_lib.is_chief(strategy)
    logging.info("Strategy: %s", strategy_lib.describe(strategy))
    # The chief is the one writer of model_dir; the other workers only read it.
    lock = run_dir.RunDirLock(model_dir).acquire() if chief else None
    try:
        return _run(task, strategy, chief, preemption)
    finally:
        if lock is not None:
            lock.release()


def _run(task, strategy, chief, preemption):
    fv = task.flags
    model_dir = fv.model_dir
    if chief:
        run_dir.remove_partial_saves(model_dir)
    found = run_dir.checkpoint_steps(model_dir)
    task.prepare(model_dir, chief)
    # Seeded just before the weights are created, so what `prepare` did (learning a vocabulary
    # or not, on a resumed run) cannot shift the initial weights.
    keras.utils.set_random_seed(fv.seed)
    with strategy.scope():
        model = task.build_model()
        schedule = optimization.WarmupDecay(
            fv.learning_rate, fv.train_steps, fv.warmup_steps, fv.decay,
            fv.end_learning_rate_ratio)
        optimizer = optimization.make_optimizer(fv, schedule)
        optimizer.build(model.trainable_variables)
    logging.info("Model %s: %s parameters.", model.name, f"{model.count_params():,}")
    backbone_config = (keras.saving.serialize_keras_object(model.backbone)
                       if hasattr(model, "backbone") else None)

    # Non-TPU strategies read from plain tf.data iterators, which (unlike tf.distribute's
    # DistributedIterator, not trackable in TF 2.21) are saved in checkpoints. With
    # --per_worker_input each worker's pipeline yields only its share of every global batch
    # (element-level sharding: worker p of P gets elements p, p + P, ... of the one global
    # stream, so global batch t holds the same examples for any P) and saves its own iterator;
    # otherwise every worker reads whole global batches and keeps its slice. TPUs need
    # tf.distribute's input pipeline; a resumed TPU run (or --nocheckpoint_iterator) skips the
    # batches it already consumed, which gives the same ones.
    host_input = not isinstance(strategy, tf.distribute.TPUStrategy)
    save_iterator = fv.checkpoint_iterator and host_input
    context = strategy_lib.input_context(strategy)
    per_worker = host_input and fv.per_worker_input and context.num_input_pipelines > 1
    pipelines = context.num_input_pipelines if per_worker else 1
    worker_index = context.input_pipeline_id
    train_ds = task.train_dataset(fv.global_batch_size // pipelines,
                                  context if per_worker else None)
    logging.info("Input: this worker's pipeline (%d of %d) reads %d of every %d examples.",
                 worker_index if per_worker else 0, pipelines,
                 fv.global_batch_size // pipelines, fv.global_batch_size)
    # Worker 0 (the chief) keeps its iterator in the main checkpoint; the others in their own.
    own_input = save_iterator and per_worker and worker_index > 0
    state = dict(model=checkpoints.model_tree(model), optimizer=optimizer)
    iterator = None
    if save_iterator:
        iterator = iter(train_ds)
        if not own_input:
            state["iterator"] = iterator
    checkpoint = tf.train.Checkpoint(**state)
    input_manager = None
    if own_input:
        input_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(iterator=iterator),
            controller.worker_input_dir(model_dir, worker_index),
            max_to_keep=fv.keep_checkpoints + 1)

    def restore(path):
        if save_iterator:
            controller.check_worker_inputs(model_dir, path, pipelines)
        checkpoint.restore(path).assert_existing_objects_matched()
        if input_manager is not None:
            input_manager.checkpoint.restore(
                controller.worker_input_path(model_dir, worker_index, path)).assert_consumed()

    # An existing run is compared with these flags and restored before anything is written
    # into its model_dir: a resume that cannot work leaves the directory as it was.
    resumed = None
    if found:
        controller.compare_with_stored_run(task, backbone_config, save_iterator)
        resumed = run_dir.restore_newest(found, restore, model_dir)
        logging.info("Resumed from %s at step %d.",
                     os.path.join(model_dir, f"ckpt-{resumed}"), int(optimizer.iterations.numpy()))
    else:
        task.initialize_from_pretrained(model)
    if chief:
        controller.write_run_files(task, backbone_config, found, resumed)
    recovery = controller.Recovery(model_dir, fv.max_recoveries, chief, resumed is not None)

    def position_input(step):
        # After restoring `step` (or at 0): past the batches used, and past skipped windows.
        nonlocal iterator
        skip = recovery.input_skip(step, save_iterator)
        if save_iterator:
            for _ in range(skip):
                next(iterator)
            return
        dataset = train_ds.skip(skip)
        iterator = iter(dataset if host_input else strategy.experimental_distribute_dataset(
            _with_sharding_policy(dataset)))

    position_input(int(optimizer.iterations.numpy()))

    save_dir = model_dir if chief else os.path.join(
        model_dir, f".worker_{strategy_lib.task_id(strategy)}_tmp")

    def checkpoint_manager():
        # One checkpoint more than --keep_checkpoints: the newest is unverified until the next
        # step shows that its weights give a finite loss (if they do not, it is deleted, and
        # the one before it is still there).
        return tf.train.CheckpointManager(
            checkpoint, save_dir, max_to_keep=fv.keep_checkpoints + 1,
            step_counter=optimizer.iterations)

    manager = checkpoint_manager()
    barrier = _make_barrier(strategy) if save_iterator and per_worker else None
    agree = _make_agreement(strategy) if context.num_input_pipelines > 1 else None

    def save(step):
        # Every worker's iterator is on disk before the chief's checkpoint names the step, so
        # the latest checkpoint always has its per-worker iterators, even after a SIGKILL.
        if input_manager is not None:
            input_manager.save(checkpoint_number=step)
        if barrier is not None:
            barrier()
        return manager.save(checkpoint_number=step)

    # Built before training so that an unusable evaluation source fails now, not at the end.
    eval_ds = task.eval_dataset(fv.global_batch_size)
    train_loop = make_train_loop(task, model, optimizer, strategy, fv.global_clipnorm,
                                 host_input, per_worker)
    eval_step = _make_eval_step(task, model, strategy, host_input)
    log = ProgressLog(model_dir, chief, fv.train_steps, fv.global_batch_size)
    step = int(optimizer.iterations.numpy())
    start_step = step
    last_saved = resumed
    eval_metrics = {}
    log.start(step)
    while step < fv.train_steps:
        done, loss, sums, grad_norm, applied = train_loop(
            iterator, tf.constant(loop_length(step, start_step, fv), tf.int32))
        step += int(done)
        loss, grad_norm = float(loss), float(grad_norm)
        if not bool(applied):
            # The update was not applied, so the weights are those that gave this loss.
            try:
                step = recovery.recover(step, loss, grad_norm, last_saved, start_step, restore)
            except NonFiniteLossError:
                _discard_worker_dir(save_dir, model_dir)
                log.close()
                raise
            start_step = last_saved = step
            position_input(step)
            manager = checkpoint_manager()  # reads the state file the recovery left
            log.start(step)
            continue
        log.accumulate({k: float(v) for k, v in sums.items()})
        if step % fv.log_every == 0 or step in (start_step + 1, fv.train_steps):
            log.write(step, loss, float(schedule(step - 1)), grad_norm, task.metrics)
        if step % fv.checkpoint_every == 0 or step == fv.train_steps:
            save(step)
            last_saved = step
        if fv.eval_every and step % fv.eval_every == 0 and step != fv.train_steps:
            eval_metrics = _evaluate(task, eval_ds, eval_step, strategy, fv, log, step, host_input)
            log.restart_clock()
        try:
            preemption.preempted(step, lambda: (manager.latest_checkpoint if last_saved == step
                                                else save(step)), agree)
        except Preempted:
            _discard_worker_dir(save_dir, model_dir)
            log.close()
            raise
    if step > start_step or not eval_metrics:
        eval_metrics = _evaluate(task, eval_ds, eval_step, strategy, fv, log, step, host_input)
    _discard_worker_dir(save_dir, model_dir)
    if chief:
        checkpoints.keep_newest(model_dir, fv.keep_checkpoints)
    logging.info("Finished at step %d (last checkpoint: step %s).", step, last_saved)
    if chief:
        preset.write_preset(model, task.preprocessor(), model_dir)
    if fv.export_dir and chief:
        path = task.export(model, fv.export_dir)
        logging.info("Exported a SavedModel to %s", path)
    log.close()
    return eval_metrics


def _with_sharding_policy(dataset):
    # In-memory and generated datasets cannot be sharded by file; every worker builds the same
    # deterministic pipeline and keeps its own slice of each global batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _make_barrier(strategy):
    # One all-reduce: no worker returns from it before every worker has called it.
    @tf.function
    def barrier():
        ones = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(SUM, ones, axis=None)

    return barrier


def _make_agreement(strategy):
    # Sums per-worker counts over every worker (each replica adds its worker's share).
    local = strategy_lib.local_replicas(strategy)

    @tf.function
    def total(counts):
        per_replica = strategy.run(lambda c: c / local, args=(counts,))
        return strategy.reduce(SUM, per_replica, axis=None)

    return lambda counts: [round(float(c)) for c in total(tf.constant(counts, tf.float32))]


def _split_for_replicas(strategy, batch, per_worker=False):
    """Distributes a batch: replica r of the n it is shared by gets rows [r b // n, (r+1) b // n).

    A global batch is shared by all replicas; a per-worker batch by this worker's replicas,
    which MultiWorkerMirroredStrategy numbers consecutively (see strategy_lib.input_context).
    """
    local = strategy_lib.local_replicas(strategy)

    def replica_slice(context):
        count = local if per_worker else context.num_replicas_in_sync
        index = context.replica_id_in_sync_group % count

        def cut(tensor):
            size = tf.shape(tensor)[0]
            return tensor[size * index // count: size * (index + 1) // count]

        return tf.nest.map_structure(cut, batch)

    return strategy.experimental_distribute_values_from_function(replica_slice)


def make_train_loop(task, model, optimizer, strategy, clipnorm, host_input, per_worker=False,
                    jit_compile=False):
    """`train_loop(iterator, num_steps) -> (steps_done, loss, sums, grad_norm, applied)`.

    One tf.function that runs up to `num_steps` steps (a `tf.while_loop`), as Orbit's
    StandardTrainer does, so the host waits once per loop: `loss`, `grad_norm` and `applied`
    are the last step's, `sums` the metric sums over the loop's steps, reduced over replicas on
    the device. Each update is applied only when the loss and the all-reduced gradients are
    finite, so the weights never take a non-finite step; the loop ends after the first step
    that was not applied (`applied` False, its step is `steps_done`). `jit_compile=True`
    compiles each replica's whole step (forward, gradients, all-reduce, clipping, AdamW) with
    XLA, which is what TPUStrategy does with it.
    """
    variables = model.trainable_variables

    def replica_step(batch):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            loss_sum, normaliser, sums = task.loss_terms(model, batch, training=True)
            total = context.all_reduce(SUM, tf.cast(normaliser, tf.float32))
            loss = tf.cast(loss_sum, tf.float32) / tf.maximum(total, 1e-12)
        grads = tape.gradient(loss, variables)
        # The loss is reduced with the gradients, so every replica takes the same decision.
        loss, *grads = context.all_reduce(SUM, [loss, *(tf.convert_to_tensor(g) for g in grads)])
        if clipnorm > 0:
            grads, grad_norm = tf.clip_by_global_norm(grads, clipnorm)
        else:
            grad_norm = tf.linalg.global_norm(grads)
        finite = tf.math.logical_and(tf.math.is_finite(loss), tf.math.is_finite(grad_norm))
        _apply_if(finite, optimizer, grads, variables)
        return loss, sums, grad_norm, finite

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    def one_step(iterator):
        batch = next(iterator)
        if host_input:
            batch = _split_for_replicas(strategy, batch, per_worker)
        loss, sums, grad_norm, finite = strategy.run(replica_step, args=(batch,))
        first = lambda x: strategy.experimental_local_results(x)[0]  # noqa: E731
        sums = {k: strategy.reduce(SUM, v, axis=None) for k, v in sums.items()}
        return first(loss), sums, first(grad_norm), first(finite)

    @tf.function
    def train_loop(iterator, num_steps):
        loss, sums, grad_norm, finite = one_step(iterator)
        done = tf.constant(1, tf.int32)
        while finite and done < num_steps:
            loss, step_sums, grad_norm, finite = one_step(iterator)
            sums = {k: sums[k] + step_sums[k] for k in sums}
            done += 1
        return done, loss, sums, grad_norm, finite

    train_loop.replica_step = replica_step  # for tests: the XLA-compiled part
    return train_loop


def _apply_if(finite, optimizer, grads, variables):
    """`optimizer.apply(grads, variables)` when `finite`, else nothing (in a replica context).

    As Keras' LossScaleOptimizer does: strategies that need `merge_call` (which
    `optimizer.apply` makes) cannot have it inside a `tf.cond` in a replica context, so the
    cond runs in the cross-replica context there.
    """
    def apply():
        optimizer.apply(grads, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, apply, lambda: None)
        return

    def cross_replica(distribution, finite, grads, variables):
        def apply_everywhere():
            distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

        tf.cond(distribution.experimental_local_results(finite)[0], apply_everywhere,
                lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica,
                                                   args=(finite, grads, variables))


def _make_eval_step(task, model, strategy, host_input):
    def replica_step(batch):
        _, _, sums = task.loss_terms(model, batch, training=False)
        return sums

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        if host_input:
            batch = _split_for_replicas(strategy, batch)
        sums = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(SUM, v, axis=None) for k, v in sums.items()}

    return eval_step


def _evaluate(task, dataset, eval_step, strategy, fv, log, step, host_input):
    if dataset is None:
        return {}
    if not host_input:
        dataset = strategy.experimental_distribute_dataset(_with_sharding_policy(dataset))
    totals = {}
    batches = 0
    for batch in dataset:
        for key, value in eval_step(batch).items():
            totals[key] = totals.get(key, 0.0) + float(value)
        batches += 1
        if fv.eval_steps and batches >= fv.eval_steps:
            break
    if not batches:
        raise ValueError("The evaluation dataset yielded no batch.")
    metrics = task.metrics(totals)
    log.write_eval(step, metrics, batches)
    return metrics


def _discard_worker_dir(save_dir, model_dir):
    # Non-chief workers take part in saving (collectives) but their copies are throwaway.
    if save_dir != model_dir:
        if tf.io.gfile.exists(save_dir):
            tf.io.gfile.rmtree(save_dir)
