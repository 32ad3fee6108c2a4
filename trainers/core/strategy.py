"""The tf.distribute strategy factory behind `--strategy`, `--tpu` and `--num_cpu_devices`."""

import json
import os

import tensorflow as tf


def split_cpu(num_devices):
    """Splits the first CPU into `num_devices` logical devices (before TF initialises them).

    Lets MirroredStrategy run over several replicas on one CPU, e.g. to check that a run
    gives the same losses on 1 and 2 replicas. Must run before any op executes.
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as error:
        raise RuntimeError(
            f"--num_cpu_devices={num_devices}: TensorFlow already initialised its devices; "
            "the split must happen before any TensorFlow op runs.") from error


def make_strategy(name, tpu=None, num_cpu_devices=0, tpu_resolver_cls=None):
    """Returns the `tf.distribute.Strategy` named by `--strategy`.

    Args:
        name: "default" (no distribution), "one_device" (the first GPU, else the CPU),
            "mirrored" (all local GPUs, or the logical CPUs of `num_cpu_devices`),
            "multi_worker_mirrored" (the cluster in the TF_CONFIG environment variable)
            or "tpu".
        tpu: TPU name, "grpc://IP:8470" or "local"; required for "tpu".
        num_cpu_devices: with "mirrored" and no GPU, mirror over this many logical CPUs.
        tpu_resolver_cls: the cluster-resolver class (injected by tests).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        if num_cpu_devices > 1 and len(cpus) < num_cpu_devices:
            raise RuntimeError(
                f"--num_cpu_devices={num_cpu_devices}: only {len(cpus)} logical CPU(s) exist; "
                "split_cpu() must run before TensorFlow initialises its devices.")
        return tf.distribute.MirroredStrategy(cpus[: max(num_cpu_devices, 1)])
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker_mirrored: the TF_CONFIG environment variable is not "
                "set; it must describe the cluster, e.g. {\"cluster\": {\"worker\": "
                "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", "
                "\"index\": 0}}.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        if not tpu:
            raise ValueError("--tpu: required with --strategy=tpu.")
        resolver_cls = tpu_resolver_cls or tf.distribute.cluster_resolver.TPUClusterResolver
        resolver = resolver_cls(tpu=tpu)
        if tpu != "local":
            # On a TPU VM ("local") the chips are attached; a remote TPU needs a connection.
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy={name!r}: unknown strategy.")


def is_chief(strategy):
    """True on the worker that writes summaries, flags and the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def task_id(strategy):
    """This worker's index (0 outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        return resolver.task_id or 0
    return 0


def input_context(strategy):
    """The `tf.distribute.InputContext` of this worker's input pipeline: one per worker.

    Pipeline ids follow TensorFlow's own numbering (`_id_in_cluster`: a "chief" task is 0,
    worker i is i + 1 when there is a chief, else i), which is also the order in which
    MultiWorkerMirroredStrategy numbers the replicas: pipeline p feeds replicas
    [p * local, (p + 1) * local). TPUStrategy and one-process strategies have one pipeline.
    """
    replicas = strategy.num_replicas_in_sync
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return tf.distribute.InputContext(1, 0, replicas)
    cluster = resolver.cluster_spec().as_dict()
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if not chiefs + workers:  # MWMS without TF_CONFIG: this process alone
        return tf.distribute.InputContext(1, 0, replicas)
    index = 0 if resolver.task_type == "chief" else chiefs + (resolver.task_id or 0)
    return tf.distribute.InputContext(chiefs + workers, index, replicas)


def local_replicas(strategy):
    """How many replicas this process feeds."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        return 1


def describe(strategy):
    """One line for the log: the strategy class and its replicas."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        devices = ["default device"]
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s) on {devices}"
