"""Element-wise regions compiled into single kernels, where the backend allows it.

gMLP spends a third of a CPU training step in element-wise work (LayerNorm,
GELU, the SGU's split and gate), and TensorFlow runs each keras.ops call as
its own kernel, a full pass over memory each. The layers write those
regions, and their hand-written gradients, as plain keras.ops functions
decorated with `fused`. On the TensorFlow backend `fused` compiles such a
function with XLA into one loop while the matmuls around it stay on
TensorFlow's oneDNN kernels (compiling the whole step with XLA was slower:
its CPU matmuls are, and it has no AMX bfloat16 path here). On JAX, where
the whole step is compiled anyway, and on other backends the function runs
as written.

`fusion_disabled()` traces the plain ops instead, for graphs that must not
require XLA at run time (SavedModels for TF Serving) and to compare the two.
"""

import contextlib
import functools

import keras

_enabled = True


def fusion_enabled():
    """Whether `fused` functions are compiled when traced now."""
    return _enabled


@contextlib.contextmanager
def fusion_disabled():
    """Within this context, `fused` functions trace their plain keras.ops.

    The switch is read when a function is traced, so it applies to graphs
    traced inside the context (a `tf.function` traced earlier keeps what it
    traced). It is process-wide, not per thread, because tf.distribute runs
    replicas in threads of its own.
    """
    global _enabled
    previous = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = previous


def fused(fn):
    """Decorates an element-wise keras.ops function to run as one compiled kernel.

    `fn` takes tensors (and Python constants, which become part of the
    compiled function's key) and returns a tensor or a tuple of tensors.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf  # the backend is TensorFlow, so this import is already paid for

    # One compiled function per argument rank and channel count: with `reduce_retracing`,
    # TensorFlow generalises the shapes it has seen into one trace, and would drop to an unknown
    # rank, or an unknown channel count that the kernels' reductions need, when given two.
    compiled = {}

    def signature(arg):
        shape = getattr(arg, "shape", None)
        if shape is None or getattr(shape, "rank", 0) is None:
            return None
        shape = tuple(shape)
        return (len(shape), shape[-1] if shape else None)

    @functools.wraps(fn)
    def call(*args):
        if not _enabled:
            return fn(*args)
        key = tuple(signature(arg) for arg in args)
        if key not in compiled:
            compiled[key] = tf.function(
                fn, jit_compile=True, autograph=False, reduce_retracing=True
            )
        return compiled[key](*args)

    return call
