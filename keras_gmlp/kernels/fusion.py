"""`fused`: an element-wise keras.ops function compiled by XLA into one loop.

TensorFlow runs each keras.ops call as its own kernel, a full pass over memory each. A function
decorated with `fused` is compiled with XLA (`tf.function(jit_compile=True)`) so the region runs
as one loop, while the matmuls around it stay on TensorFlow's oneDNN kernels. Compiling the
whole step with XLA instead was slower on this CPU (its CPU matmuls are, and it has no AMX
bfloat16 path): 185 ms against 160 ms per forward+backward of 4 gMLP-S blocks
(`python -m benchmarks.run --sections variants`). Off TensorFlow the function runs as written.
"""

import functools

import keras


def fused(fn):
    """Decorates an element-wise keras.ops function to run as one XLA-compiled kernel.

    `fn` takes tensors, None and Python constants (which become part of the compiled
    function's key) and returns a tensor or a structure of tensors.
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
            return arg if isinstance(arg, (bool, int, float, type(None))) else None
        shape = tuple(shape)
        return (len(shape), shape[-1] if shape else None)

    @functools.wraps(fn)
    def call(*args):
        key = tuple(signature(arg) for arg in args)
        if key not in compiled:
            compiled[key] = tf.function(
                fn, jit_compile=True, autograph=False, reduce_retracing=True
            )
        return compiled[key](*args)

    return call
