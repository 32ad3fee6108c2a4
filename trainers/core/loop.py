"""The one training loop behind every trainer and every strategy.

A custom loop (as tf-models/Orbit do), not `model.fit`: Keras 3.15's fit fails under
MultiWorkerMirroredStrategy, while `strategy.run` inside a
`tf.function` works for default, one-device, mirrored, multi-worker and TPU strategies alike.
Each step: forward and loss on every replica, loss divided by a normaliser all-reduced over
replicas, gradients all-reduced once, clipped by their global norm, applied by AdamW.
"""

import json
import os
import re
import sys

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from trainers.core import checkpoints
from trainers.core import flags as flags_lib
from trainers.core import optimization
from trainers.core import preset
from trainers.core import run_dir
from trainers.core import strategy as strategy_lib
from trainers.core.summaries import ProgressLog

SUM = tf.distribute.ReduceOp.SUM
MODEL_CONFIG_FILE = run_dir.MODEL_CONFIG_FILE


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped without saving that step."""


NON_FINITE_EXIT_CODE = 3


def main_for(task_class):
    """An `absl.app` main that trains `task_class(FLAGS)`; a NaN/Inf loss exits with status 3."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            run(task_class(flags.FLAGS))
        except NonFiniteLossError as error:
            logging.error("%s", error)
            sys.exit(NON_FINITE_EXIT_CODE)

    return main


def run(task):
    """Trains `task` (a `trainers.core.task.Task`) per its flags; returns the final metrics."""
    if keras.backend.backend() == "jax":
        from trainers.core import jax_loop

        return jax_loop.run(task)
    fv = task.flags
    model_dir = fv.model_dir
    if fv.strategy == "mirrored" and fv.num_cpu_devices > 1:
        strategy_lib.split_cpu(fv.num_cpu_devices)
    if fv.deterministic:
        tf.config.experimental.enable_op_determinism()
    if fv.mixed_precision != "float32":
        keras.config.set_dtype_policy(fv.mixed_precision)
    strategy = strategy_lib.make_strategy(fv.strategy, fv.tpu, fv.num_cpu_devices)
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
        return _run(task, strategy, chief)
    finally:
        if lock is not None:
            lock.release()


def _run(task, strategy, chief):
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
    if save_iterator:
        iterator = iter(train_ds)
        if not own_input:
            state["iterator"] = iterator
    checkpoint = tf.train.Checkpoint(**state)
    input_manager = None
    if own_input:
        input_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(iterator=iterator), worker_input_dir(model_dir, worker_index),
            max_to_keep=fv.keep_checkpoints + 1)

    def restore(path):
        if save_iterator:
            _check_worker_inputs(model_dir, path, pipelines)
        checkpoint.restore(path).assert_existing_objects_matched()
        if input_manager is not None:
            input_manager.checkpoint.restore(
                _worker_input_path(model_dir, worker_index, path)).assert_consumed()

    # An existing run is compared with these flags and restored before anything is written
    # into its model_dir: a resume that cannot work leaves the directory as it was.
    resumed = None
    if found:
        _compare_with_stored_run(task, backbone_config, save_iterator)
        resumed = run_dir.restore_newest(found, restore, model_dir)
        logging.info("Resumed from %s at step %d.",
                     os.path.join(model_dir, f"ckpt-{resumed}"), int(optimizer.iterations.numpy()))
    else:
        task.initialize_from_pretrained(model)
    if chief:
        _write_run_files(task, backbone_config, found, resumed)
    if not save_iterator:
        train_ds = train_ds.skip(int(optimizer.iterations.numpy()))
        iterator = iter(train_ds if host_input else strategy.experimental_distribute_dataset(
            _with_sharding_policy(train_ds)))

    save_dir = model_dir if chief else os.path.join(
        model_dir, f".worker_{strategy_lib.task_id(strategy)}_tmp")
    # One checkpoint more than --keep_checkpoints: the newest is unverified until the next step
    # shows that its weights give a finite loss (if they do not, it is deleted, and the one
    # before it is still there).
    manager = tf.train.CheckpointManager(
        checkpoint, save_dir, max_to_keep=fv.keep_checkpoints + 1,
        step_counter=optimizer.iterations)
    barrier = _make_barrier(strategy) if save_iterator and per_worker else None

    def save(step):
        # Every worker's iterator is on disk before the chief's checkpoint names the step, so
        # the latest checkpoint always has its per-worker iterators, even after a SIGKILL.
        if input_manager is not None:
            input_manager.save(checkpoint_number=step)
        if barrier is not None:
            barrier()
        manager.save(checkpoint_number=step)

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
            kept = manager.latest_checkpoint
            if chief and last_saved == step - 1 and step - 1 > start_step:
                checkpoints.discard(model_dir, kept)
                kept = tf.train.latest_checkpoint(model_dir)
            _discard_worker_dir(save_dir, model_dir)
            raise NonFiniteLossError(
                f"Non-finite training loss ({loss}) or gradient norm ({grad_norm}) at step "
                f"{step}; stopped without applying or saving this step. "
                + (f"A checkpoint of step {step - 1} held the weights that gave this loss; it "
                   "was deleted. " if kept != manager.latest_checkpoint else "")
                + f"The last good checkpoint is kept: {kept or 'none was written yet'}. "
                "Lower --learning_rate, raise --warmup_steps or set --global_clipnorm, then "
                "restart from it.")
        log.accumulate({k: float(v) for k, v in sums.items()})
        if step % fv.log_every == 0 or step in (start_step + 1, fv.train_steps):
            log.write(step, loss, float(schedule(step - 1)), grad_norm, task.metrics)
        if step % fv.checkpoint_every == 0 or step == fv.train_steps:
            save(step)
            last_saved = step
        if fv.eval_every and step % fv.eval_every == 0 and step != fv.train_steps:
            eval_metrics = _evaluate(task, eval_ds, eval_step, strategy, fv, log, step, host_input)
            log.restart_clock()
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


def _compare_with_stored_run(task, backbone_config, save_iterator):
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


def _write_run_files(task, backbone_config, found, resumed):
    """Flags, backbone config and the task's files (vocabulary), once the run can go on."""
    fv = task.flags
    model_dir = fv.model_dir
    flags_lib.write_flags(model_dir, fv)
    if backbone_config is not None:
        run_dir.write_atomically(os.path.join(model_dir, MODEL_CONFIG_FILE),
                                 json.dumps(backbone_config, indent=2, default=str))
    task.write_run_files(model_dir)
    if resumed is not None:
        # The state file may be lost or damaged: name the intact checkpoints up to the
        # restored one, so that CheckpointManager keeps and rotates them.
        older = [s for s in sorted(found) if s < resumed and
                 tf.io.gfile.exists(os.path.join(model_dir, f"ckpt-{s}.index"))]
        run_dir.write_state(model_dir, [f"ckpt-{s}" for s in older + [resumed]])
    elif tf.io.gfile.exists(os.path.join(model_dir, run_dir.STATE_FILE)):
        tf.io.gfile.remove(os.path.join(model_dir, run_dir.STATE_FILE))  # names no checkpoint


def _with_sharding_policy(dataset):
    # In-memory and generated datasets cannot be sharded by file; every worker builds the same
    # deterministic pipeline and keeps its own slice of each global batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def loop_length(step, start_step, fv):
    """Steps in the next `train_loop` call: up to --steps_per_loop, ending at every boundary.

    Loops end at multiples of --steps_per_loop and never run past a step at which something
    happens on the host: a multiple of --log_every, --checkpoint_every or --eval_every, the
    first step of this process (logged on its own) or --train_steps. So intervals that are not
    multiples of --steps_per_loop (or a --train_steps that is not) give shorter loops, every
    interval is kept exactly, and a resumed run's loops end where an uninterrupted run's do.
    """
    if step == start_step:
        return 1
    end = fv.train_steps
    for every in (fv.steps_per_loop, fv.log_every, fv.checkpoint_every, fv.eval_every):
        if every:
            end = min(end, (step // every + 1) * every)
    return end - step


def worker_input_dir(model_dir, index):
    """Where worker `index` > 0 keeps its input iterator under --per_worker_input."""
    return os.path.join(model_dir, f"input_worker_{index}")


def _worker_input_path(model_dir, index, latest):
    return os.path.join(worker_input_dir(model_dir, index), os.path.basename(latest))


def _check_worker_inputs(model_dir, latest, pipelines):
    """The latest checkpoint's per-worker iterators must be exactly this run's workers'."""
    found = set()
    for name in tf.io.gfile.listdir(model_dir):
        match = re.fullmatch(r"input_worker_(\d+)/?", name)
        if match and tf.io.gfile.exists(
                _worker_input_path(model_dir, int(match[1]), latest) + ".index"):
            found.add(int(match[1]))
    if found != set(range(1, pipelines)):
        raise ValueError(
            f"--model_dir={model_dir}: {os.path.basename(latest)} was saved with "
            f"{len(found) + 1} input pipeline(s) (per-worker iterators of workers "
            f"{sorted(found)}), but this run has {pipelines}: expected the same workers and "
            "--per_worker_input setting, or --nocheckpoint_iterator to resume by skipping the "
            "batches already used.")


def _make_barrier(strategy):
    # One all-reduce: no worker returns from it before every worker has called it.
    @tf.function
    def barrier():
        ones = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(SUM, ones, axis=None)

    return barrier


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
