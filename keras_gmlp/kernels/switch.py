"""The one switch between the layers' plain path and their fused kernels.

The kernels were measured to help on one setting only: the TensorFlow backend on the CPU (see
`keras_gmlp.kernels`). Everywhere else (JAX, PyTorch, a TensorFlow GPU or TPU, SavedModels for
TF Serving, inside `disabled()`) the layers run their plain keras.ops, differentiated by the
backend's autodiff.
"""

import contextlib
import functools

import keras

_disabled = False


@functools.cache
def _tensorflow_on_cpu_only():
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf  # the backend is TensorFlow, so this import is already paid for

    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def active():
    """Whether the layers take their fused-kernel path when traced now."""
    return not _disabled and _tensorflow_on_cpu_only()


@contextlib.contextmanager
def disabled():
    """Within this context the layers trace their plain keras.ops path.

    The switch is read when a layer is traced, so it applies to graphs traced inside the
    context (a `tf.function` traced earlier keeps what it traced). It is process-wide, not per
    thread, because tf.distribute runs replicas in threads of its own. SavedModel export traces
    inside it, so a served graph needs neither XLA nor custom gradients.
    """
    global _disabled
    previous = _disabled
    _disabled = True
    try:
        yield
    finally:
        _disabled = previous
