"""Resampling a vision gMLP's spatial weights to another patch grid (serving or fine-tuning a
model at another image resolution, as ViT position embeddings are interpolated).

A Spatial Gating Unit over an `h x w` patch grid holds `W` of shape `(n, n)`, `n = h * w`,
with `W[m, j]` the weight of input patch `j` in output patch `m` (row-major patches), and a
bias `b` of shape `(n,)`. Read as `W[(y, x), (y', x')]` on the grid, `W` samples a kernel
`k(position_m, position_j)` over image positions, and `sum_j W[m, j] v[j]` a sum over the input
patches that approximates an integral over the image. Resampling to an `h' x w'` grid:

    W' = (h * w) / (h' * w') * R W R^T,    b' = R b,    R = kron(R_h, R_w)  (n', n)

where `R_h` `(h', h)` and `R_w` `(w', w)` interpolate one grid axis; `R` acts on the output
axes and `R^T` on the input axes. The factor keeps the operator: with `n'/n` times as many
input patches, each covers `n/n'` of the area they sum over, so a smooth kernel resamples to
the same integral operator (`W'` applied to the resampled input ~ `W`'s output resampled).

The interpolation is bicubic (Keys' cubic convolution, a = -0.5) at patch centres (half-pixel
convention), as timm resamples ViT/DeiT position embeddings for 224 -> 384 fine-tuning:
third-order accurate on smooth weights where bilinear is second-order, and exact at the same
grid (`R` is the identity). When a grid axis shrinks, the kernel is widened by the shrink
factor (antialiasing, so each new patch averages the old ones it covers rather than sampling
a few); near the edges the weights of the missing neighbours are dropped and the rest
renormalised (rows of `R` sum to 1, so a constant `b` stays constant). This is
`jax.image.resize(..., "bicubic", antialias=True)` written as a matrix, in NumPy, so a preset
resamples to the same weights on every Keras backend (keras.ops.image.resize's bicubic differs
between backends: PyTorch's uses a = -0.75).
"""

import numpy as np

from keras_gmlp import validation

_KEYS_A = -0.5


def _keys_cubic(x):
    x = np.abs(x)
    a = _KEYS_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def interpolation_matrix(source_size, target_size):
    """`(target_size, source_size)` bicubic interpolation matrix of one grid axis.

    Row `i` holds the weights of the source cells in target cell `i`, cell centres aligned
    (half-pixel convention), the kernel widened by `source_size / target_size` when shrinking;
    each row sums to 1. The same size gives the identity.
    """
    source_size = validation.check_positive_int("source_size", source_size)
    target_size = validation.check_positive_int("target_size", target_size)
    if source_size == target_size:
        return np.eye(target_size)
    ratio = source_size / target_size
    widen = max(ratio, 1.0)
    centres = (np.arange(target_size) + 0.5) * ratio - 0.5
    weights = _keys_cubic((np.arange(source_size)[None, :] - centres[:, None]) / widen)
    return weights / weights.sum(axis=1, keepdims=True)


def check_grid(name, grid):
    """`grid` as `(height, width)` in patches, two positive ints."""
    validation.check(isinstance(grid, (tuple, list)) and len(grid) == 2
                     and all(validation.is_int(size) and size >= 1 for size in grid),
                     name, grid, "(height, width) in patches, two positive ints")
    return tuple(int(size) for size in grid)


def resample_spatial_weights(kernel, bias, source_grid, target_grid):
    """A Spatial Gating Unit's `(W, b)` on `source_grid` resampled to `target_grid`.

    Args:
        kernel: `(n, n)` array, `W[m, j]` (output patch m, input patch j), `n` the number of
            patches of `source_grid`, row-major.
        bias: `(n,)` array.
        source_grid: `(h, w)`, the patch grid the weights were trained on.
        target_grid: `(h', w')`, the patch grid to serve or fine-tune on.

    Returns:
        `(W', b')` NumPy arrays of shapes `(n', n')` and `(n',)`, `n' = h' * w'`, in the input
        dtype: `W' = (n / n') R W R^T`, `b' = R b` (module docstring). The same grid returns
        the weights unchanged.
    """
    source_grid = check_grid("source_grid", source_grid)
    target_grid = check_grid("target_grid", target_grid)
    kernel, bias = np.asarray(kernel), np.asarray(bias)
    n = source_grid[0] * source_grid[1]
    validation.check(kernel.shape == (n, n), "kernel shape", kernel.shape,
                     f"({n}, {n}) for source_grid={source_grid}")
    validation.check(bias.shape == (n,), "bias shape", bias.shape,
                     f"({n},) for source_grid={source_grid}")
    if source_grid == target_grid:
        return kernel, bias
    resample = np.kron(interpolation_matrix(source_grid[0], target_grid[0]),
                       interpolation_matrix(source_grid[1], target_grid[1]))
    area = n / (target_grid[0] * target_grid[1])
    new_kernel = area * (resample @ kernel.astype("float64") @ resample.T)
    new_bias = resample @ bias.astype("float64")
    return new_kernel.astype(kernel.dtype), new_bias.astype(bias.dtype)
