"""The training recipe of keras_gmlp: one home for the optimizer, its weight-decay exclusions,
the learning-rate schedule, losses and metrics, used by the tasks' `compile()` defaults and by
the trainers (`trainers/core/optimization.py`).

AdamW never decays LayerNorm scales/offsets or biases (BERT's and timm's recipe). Keras matches
`exclude_from_weight_decay(var_names=...)` patterns with `re.search` against `variable.name`:
on the TensorFlow backend (Keras 3.15) AdamW's decay runs on the underlying tf.Variable, whose
name carries the path and a ":0" suffix ("block_0/norm/gamma:0"); elsewhere it is the Keras name
("gamma"). LayerNormalization owns "gamma"/"beta"; every bias ends in "bias" (Dense/Conv "bias",
the SGU's "spatial_bias", the masked-LM head's "output_bias").
"""

import math

import keras
from keras import ops

from keras_gmlp import validation

NO_WEIGHT_DECAY_PATTERNS = (r"(^|/)gamma(:\d+)?$", r"(^|/)beta(:\d+)?$", r"bias(:\d+)?$")

# Defaults of each task's `compile()`: the paper's fine-tuning / pretraining sizes at small
# scale (BERT-style AdamW for text, timm's DeiT-style AdamW for images).
TASK_OPTIMIZER_DEFAULTS = {
    "masked_lm": dict(learning_rate=1e-4, weight_decay=0.01),
    "text_classifier": dict(learning_rate=2e-5, weight_decay=0.01),
    "image_classifier": dict(learning_rate=1e-3, weight_decay=0.05),
}
ADAM_DEFAULTS = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-6)


@keras.saving.register_keras_serializable(package="keras_gmlp")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` that keeps its weight-decay exclusions in its config.

    Keras' optimizers do not serialize `exclude_from_weight_decay`, so a compiled model saved
    to `.keras` would come back decaying LayerNorm and bias variables; this one does not.

    Args:
        no_weight_decay_patterns: regular expressions searched in variable names (see the
            module docstring); default `NO_WEIGHT_DECAY_PATTERNS`.
        **kwargs: `keras.optimizers.AdamW` arguments.
    """

    def __init__(self, *args, no_weight_decay_patterns=NO_WEIGHT_DECAY_PATTERNS, **kwargs):
        super().__init__(*args, **kwargs)
        self.no_weight_decay_patterns = tuple(no_weight_decay_patterns)
        self.exclude_from_weight_decay(var_names=list(self.no_weight_decay_patterns))

    def get_config(self):
        return {**super().get_config(), "no_weight_decay_patterns": list(self.no_weight_decay_patterns)}


def make_optimizer(learning_rate, weight_decay, *, beta_1=ADAM_DEFAULTS["beta_1"],
                   beta_2=ADAM_DEFAULTS["beta_2"], epsilon=ADAM_DEFAULTS["epsilon"],
                   optimizer_class=AdamW, **kwargs):
    """The recipe's AdamW: decay off for LayerNorm scales/offsets and biases.

    Args:
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`
            (e.g. `WarmupDecay`).
        weight_decay: decoupled weight decay of every other variable.
        beta_1, beta_2, epsilon: Adam's.
        optimizer_class: `AdamW` (default) or another `keras.optimizers.AdamW` subclass (the
            trainers' `PreReducedAdamW`); the exclusions are applied to it either way.
        **kwargs: passed to the optimizer (e.g. `global_clipnorm`).
    """
    optimizer = optimizer_class(learning_rate=learning_rate, weight_decay=weight_decay,
                                beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY_PATTERNS))
    return optimizer


def task_optimizer(task_kind):
    """The default optimizer of a task kind ("masked_lm", "text_classifier", "image_classifier")."""
    return make_optimizer(**TASK_OPTIMIZER_DEFAULTS[task_kind])


def masked_lm_loss():
    """Cross-entropy on logits averaged over the sum of the sample weights (BERT's
    normalisation: padded mask slots count neither in the numerator nor the denominator)."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")


def classification_loss(from_logits=True):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def accuracy_metrics():
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


@keras.saving.register_keras_serializable(package="keras_gmlp")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then decay to `peak * end_ratio`.

    lr(s) = peak * s / warmup_steps                                        for s < warmup_steps
    lr(s) = end + (peak - end) * f((s - warmup_steps) / (total - warmup))  afterwards, clipped,
    with f(p) = 1 - p ("linear"), (1 + cos(pi p)) / 2 ("cosine"), or 1 ("constant").
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay="linear", end_ratio=0.0):
        validation.check(decay in ("linear", "cosine", "constant"), "decay", decay,
                         "linear, cosine or constant")
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


# Schedules saved before the recipe moved here were registered as "keras_gmlp_trainers>...".
keras.saving.get_custom_objects().setdefault("keras_gmlp_trainers>WarmupDecay", WarmupDecay)
