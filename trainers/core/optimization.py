"""The trainers' optimizer: keras_gmlp's training recipe (`keras_gmlp.models.recipe`) per flags.

The recipe (AdamW, no weight decay on LayerNorm and bias variables, the `WarmupDecay`
schedule) is the one the tasks' `compile()` uses; this module only reads the flags and adapts
AdamW to the trainers' own replica all-reduce.
"""

import keras

from keras_gmlp.models import recipe

NO_WEIGHT_DECAY_PATTERNS = recipe.NO_WEIGHT_DECAY_PATTERNS
WarmupDecay = recipe.WarmupDecay


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
    """The recipe's AdamW per the flags (weight decay off for LayerNorm and bias variables).

    Clipping is done by the training loop on the all-reduced gradient (`--global_clipnorm`).
    """
    return recipe.make_optimizer(
        schedule,
        flag_values.weight_decay,
        beta_1=flag_values.adam_beta_1,
        beta_2=flag_values.adam_beta_2,
        epsilon=flag_values.adam_epsilon,
        optimizer_class=PreReducedAdamW,
    )
