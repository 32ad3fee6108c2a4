"""Toeplitz token mixing for long inputs: `y[m] = sum_j t(m - j) v[j] + b`, in keras.ops only.

The dense Spatial Gating Unit mixes tokens with a learned `(n, n)` matrix `W`: n^2 parameters
and n^2 multiply-adds per channel, and no weights at all for positions past `n`. Here
`W[m, j] = t(m - j)` depends only on the offset `k = m - j`, and `t` is a function defined for
every integer offset (a small relative-position network, TNN-style: Qin et al. 2023,
arXiv 2305.04749), so a layer built for `n` tokens serves longer inputs, holds
O(rpe_dim^2) parameters whatever the length, and multiplies in O(n log n) by FFT.

Two ways to compute the same product, chosen by length (`method="auto"`):
- `"dense"`: gather the `(heads, n, n)` Toeplitz matrix and matmul, as the dense unit does;
  fastest for short inputs and the readable reference;
- `"fft"`: zero-pad `v` and the coefficients to a power of two `L >= 2n - 1`, multiply their
  real FFTs (`keras.ops.rfft` / `irfft`, in float32) and keep the first `n` outputs: an exact
  linear (not circular) convolution, O(n log n).
`FFT_CROSSOVER` is the length from which `"auto"` takes the FFT (benchmarks/long_context.py
measured it). A token axis unknown until run time (a graph traced for any length) takes the
dense path, whose shapes can follow the input.
"""

import math

import keras
from keras import ops

from keras_gmlp.validation import check
from keras_gmlp.validation import check_positive_int

METHODS = ("auto", "dense", "fft")

# `method="auto"` uses the FFT from this length on. Measured by `python -m
# benchmarks.long_context --sections crossover` (forward+backward of the projection at 384
# channels, batch 2, TensorFlow CPU): the FFT took 1.6x the dense time at 256 tokens and 0.59x
# at 512, 0.29x at 1,024 (benchmarks/README.md, "Long inputs").
FFT_CROSSOVER = 512


def offsets(length):
    """The offsets `k = m - j` of an n-token input, `-(n-1) ... n-1`, as float32."""
    return ops.cast(ops.arange(-(length - 1), length), "float32")


def offset_features(k):
    """Features of offsets `k` for the relative-position network: `(len(k), 1)` float32.

    `log(1 + |k|)` grows slowly, so offsets far past the trained range stay near the
    inputs the network was trained on (a raw `k` input sends a ReLU network off on a straight
    line); the sign of `k` selects one of two output sets instead (see ToeplitzProjection).
    """
    return ops.expand_dims(ops.log1p(ops.abs(k)), -1)


def toeplitz_matrix(coefficients, length):
    """`(heads, n, n)` matrix `T[h, m, j] = t[h, m - j + n - 1]` from `(heads, 2n - 1)` coefficients.

    `coefficients[:, i]` is `t` at offset `i - (n - 1)`, as `offsets(n)` lists them.
    """
    positions = ops.arange(length)
    index = ops.expand_dims(positions, 1) - ops.expand_dims(positions, 0) + (length - 1)
    return ops.take(coefficients, index, axis=1)


def toeplitz_dense(coefficients, v):
    """`y[b, m, h*c] = sum_j t_h(m - j) v[b, j, h*c]` by an explicit `(heads, n, n)` matmul.

    `v`: `(batch, n, channels)`, channels split into `heads` equal groups (group `h` uses
    `coefficients[h]`). The matrix is cast to `v`'s dtype (the dense unit multiplies in the
    compute dtype too).
    """
    heads = coefficients.shape[0]
    length = v.shape[1] if v.shape[1] is not None else ops.shape(v)[1]
    matrix = ops.cast(toeplitz_matrix(coefficients, length), v.dtype)
    if heads == 1:
        return ops.matmul(matrix[0], v)
    batch, channels = ops.shape(v)[0], v.shape[-1]
    grouped = ops.reshape(v, (batch, length, heads, channels // heads))
    mixed = ops.einsum("hmj,bjhc->bmhc", matrix, grouped)
    return ops.reshape(mixed, (batch, length, channels))


def fft_length(length):
    """The FFT size for an n-token product: the power of two >= 2n - 1 (no wrap-around)."""
    return 1 << max(0, math.ceil(math.log2(2 * length - 1)))


def toeplitz_fft(coefficients, v):
    """The same product as `toeplitz_dense`, by FFT convolution in float32, O(n log n).

    With `c[k mod L] = t(k)` for `|k| < n` and zeros elsewhere, the circular convolution of
    `c` with `v` zero-padded to `L >= 2n - 1` is `sum_j c[(m - j) mod L] v[j]`, and for
    `0 <= m, j < n` the index `(m - j) mod L` never wraps onto another offset.
    """
    heads, count = coefficients.shape
    length = (count + 1) // 2
    size = fft_length(length)
    batch, channels = ops.shape(v)[0], v.shape[-1]
    coefficients = ops.cast(coefficients, "float32")
    # c = [t(0), ..., t(n-1), 0, ..., 0, t(-(n-1)), ..., t(-1)]
    kernel = ops.concatenate(
        [
            coefficients[:, length - 1 :],
            ops.zeros((heads, size - count), "float32"),
            coefficients[:, : length - 1],
        ],
        axis=1,
    )
    kernel_real, kernel_imag = ops.rfft(kernel, fft_length=size)  # (heads, size // 2 + 1)
    kernel_real = ops.expand_dims(kernel_real, 1)
    kernel_imag = ops.expand_dims(kernel_imag, 1)
    grouped = ops.reshape(ops.cast(v, "float32"), (batch, length, heads, channels // heads))
    grouped = ops.transpose(grouped, (0, 2, 3, 1))  # (batch, heads, c, n): FFT over the last axis
    real, imag = ops.rfft(grouped, fft_length=size)
    product = (real * kernel_real - imag * kernel_imag, real * kernel_imag + imag * kernel_real)
    mixed = ops.irfft(product, fft_length=size)[..., :length]
    mixed = ops.reshape(ops.transpose(mixed, (0, 3, 1, 2)), (batch, length, channels))
    return ops.cast(mixed, v.dtype)


@keras.saving.register_keras_serializable(package="keras_gmlp")
class ToeplitzProjection(keras.layers.Layer):
    """Shift-invariant token mixing with coefficients defined for every offset.

        y[m] = sum_j t_h(m - j) v[j] + b       (channel group h of v; b per channel)

    The coefficients come from a relative-position network (TNN, arXiv 2305.04749) times an
    exponential decay:

        t_h(k) = decay^|k| * MLP(log(1 + |k|))[h]            for k >= 0
        t_h(k) = decay^|k| * MLP(log(1 + |k|))[heads + h]    for k < 0 (0 when causal)

    The MLP (`relative_position_dim` wide, two ReLU hidden layers) outputs one set of `heads`
    coefficients for the offsets `k >= 0` (the current and earlier tokens) and another for
    `k < 0` (later tokens), so left and right context are learned separately; `causal=True`
    zeroes the second set. Why this form (measured by `python -m benchmarks.long_context
    --sections parameterization`, fitting target kernels on the offsets of 64 tokens and
    reading them back at up to 1,024): the decay keeps the coefficients of long, untrained
    offsets bounded (without it a raw-offset network reached |t| of 120-450 far out), and the
    `log(1 + |k|)` input changes slowly past the trained range, where a raw `k` input lets a
    ReLU network extrapolate linearly: 2.6-3x less error at 1,024 than the raw input. The output layer starts near zero (std 1e-6, as the
    dense unit's `W`), so at initialisation `y = b = 1` and a gMLP block is a plain FFN.

    The bias `b` is one value per channel, the same at every position: a per-position bias
    would have no trained value past the built length, and it would break the shift
    invariance that lets the coefficients carry over to longer inputs.

    Args:
        num_heads: int, channel groups with their own coefficients (1: one `t` shared by
            every channel, as the dense unit shares one `W`; `channels`: one per channel).
        causal: bool, position `m` reads only positions `j <= m`.
        decay: float in (0, 1], the decay rate `lambda` (TNN: 0.99).
        relative_position_dim: int, width of the relative-position MLP.
        method: "auto" (dense matmul below `FFT_CROSSOVER` tokens, FFT from there),
            "dense" or "fft".
        coefficient_initializer: initializer of the MLP's output kernel; defaults to
            `RandomNormal(stddev=1e-6)`.
        bias_initializer: initializer of `b`; defaults to ones.

    Call arguments:
        inputs: `(batch, n, channels)`, any `n`; `channels` divisible by `num_heads`.
        padding_mask: optional `(batch, n)`, nonzero for real tokens. Padded positions are
            zeroed before the mixing, so they reach no position. A Keras mask is used when
            this is not given.

    Returns:
        `(batch, n, channels)`.
    """

    def __init__(
        self,
        num_heads=1,
        causal=False,
        decay=0.99,
        relative_position_dim=32,
        method="auto",
        coefficient_initializer=None,
        bias_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.causal = bool(causal)
        check(isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay <= 1,
              "decay", decay, "a float in (0, 1]")
        self.decay = float(decay)
        self.relative_position_dim = check_positive_int("relative_position_dim", relative_position_dim)
        check(method in METHODS, "method", method, f"one of {METHODS}")
        self.method = method
        self.coefficient_initializer = keras.initializers.get(
            coefficient_initializer or keras.initializers.RandomNormal(stddev=1e-6)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    # The network's input features of the offsets (benchmarks/long_context.py swaps in others).
    offset_features = staticmethod(offset_features)

    def build(self, input_shape):
        channels = tuple(input_shape)[-1]
        check(channels is not None and channels % self.num_heads == 0, f"{self.name} input shape",
              tuple(input_shape), f"channels divisible by num_heads={self.num_heads}")
        # The network's weights stay float32 whatever the policy: the coefficients are few,
        # and the FFT path multiplies in float32.
        for i, (fan_in, fan_out) in enumerate(self._rpe_shapes()):
            last = i == 2
            setattr(self, f"rpe_kernel_{i}", self.add_weight(
                name=f"rpe_kernel_{i}", shape=(fan_in, fan_out), dtype="float32",
                initializer=self.coefficient_initializer if last else "he_uniform",
            ))
            setattr(self, f"rpe_bias_{i}", self.add_weight(
                name=f"rpe_bias_{i}", shape=(fan_out,), dtype="float32", initializer="zeros",
            ))
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer=self.bias_initializer)

    def _rpe_shapes(self):
        width = self.relative_position_dim
        return [(1, width), (width, width), (width, 2 * self.num_heads)]

    def coefficients(self, length):
        """`(num_heads, 2 * length - 1)` float32 coefficients `t_h(k)` at `offsets(length)`."""
        k = offsets(length)
        h = self.offset_features(k)
        for i in range(len(self._rpe_shapes())):
            kernel, bias = getattr(self, f"rpe_kernel_{i}"), getattr(self, f"rpe_bias_{i}")
            h = ops.matmul(h, ops.cast(kernel, "float32")) + ops.cast(bias, "float32")
            if i < 2:
                h = ops.relu(h)
        later = ops.expand_dims(k < 0, -1)
        t = ops.where(later, h[:, self.num_heads :], h[:, : self.num_heads])
        t = t * ops.expand_dims(ops.power(self.decay, ops.abs(k)), -1)
        if self.causal:
            t = ops.where(later, 0.0, t)
        return ops.transpose(t)

    def resolved_method(self, length):
        """The method `call` uses for an n-token input: "dense" or "fft".

        A token axis unknown when the graph is built (`length=None`, e.g. a SavedModel
        signature of any length) takes the dense path, whose size can follow the input.
        """
        if length is None:
            return "dense"
        if self.method != "auto":
            return self.method
        return "fft" if length >= FFT_CROSSOVER else "dense"

    def call(self, inputs, padding_mask=None, mask=None):
        padding_mask = padding_mask if padding_mask is not None else mask
        length = inputs.shape[1]
        method = self.resolved_method(length)
        if length is None:
            length = ops.shape(inputs)[1]
        v = inputs
        if padding_mask is not None:  # padded tokens contribute nothing to any position
            v = v * ops.expand_dims(ops.cast(padding_mask, v.dtype), -1)
        coefficients = self.coefficients(length)
        if method == "fft":
            mixed = toeplitz_fft(coefficients, v)
        else:
            mixed = toeplitz_dense(coefficients, v)
        return mixed + ops.cast(self.bias, mixed.dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "causal": self.causal,
                "decay": self.decay,
                "relative_position_dim": self.relative_position_dim,
                "method": self.method,
                "coefficient_initializer": keras.initializers.serialize(self.coefficient_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
