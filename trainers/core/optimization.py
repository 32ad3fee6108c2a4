"""Learning-rate schedule and the AdamW optimizer of the trainers."""

import math

import keras
from keras import ops

# Keras searches these regular expressions in `variable.name`. On the TensorFlow backend
# (Keras 3.15) AdamW's weight decay runs on the underlying tf.Variable, whose name carries the
# path and a ":0" suffix ("block_0/norm/gamma:0"); elsewhere it is the Keras name ("gamma").
# LayerNormalization owns "gamma"/"beta"; every bias ends in "bias" (Dense/Conv "bias", the
# SGU's "spatial_bias", the MLM head's "output_bias").
NO_WEIGHT_DECAY_PATTERNS = (r"(^|/)gamma(:\d+)?$", r"(^|/)beta(:\d+)?$", r"bias(:\d+)?$")


@keras.saving.register_keras_serializable(package="keras_gmlp_trainers")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then decay to `peak * end_ratio`.

    lr(s) = peak * s / warmup_steps                                        for s < warmup_steps
    lr(s) = end + (peak - end) * f((s - warmup_steps) / (total - warmup))  afterwards, clipped,
    with f(p) = 1 - p ("linear"), (1 + cos(pi p)) / 2 ("cosine"), or 1 ("constant").
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay="linear", end_ratio=0.0):
        if decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"`decay` must be linear, cosine or constant, got {decay!r}.")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.end_ratio = float(end_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = peak * step / warmup
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.decay == "linear":
            shape = 1.0 - progress
        elif self.decay == "cosine":
            shape = 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            shape = ops.ones_like(progress)
        end = peak * self.end_ratio
        decayed = end + (peak - end) * shape
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, decay=self.decay, end_ratio=self.end_ratio)


class PreReducedAdamW(keras.optimizers.AdamW):
    """AdamW for gradients the training loop has already summed over replicas.

    The loop all-reduces gradients itself so that clipping by global norm sees the global
    gradient (Keras clips before its own all-reduce, i.e. each replica's partial gradient).
    Keras' TensorFlow optimizer would sum the already-summed gradients a second time; this
    subclass skips that sum. Outside a replica context Keras does not reduce anyway.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


def make_optimizer(flag_values, schedule):
    """AdamW per the flags, with weight decay off for LayerNorm and bias variables.

    Clipping is done by the training loop on the all-reduced gradient (`--global_clipnorm`).
    """
    optimizer = PreReducedAdamW(
        learning_rate=schedule,
        weight_decay=flag_values.weight_decay,
        beta_1=flag_values.adam_beta_1,
        beta_2=flag_values.adam_beta_2,
        epsilon=flag_values.adam_epsilon,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY_PATTERNS))
    return optimizer
