"""Mean over the token axis that ignores padded positions."""

import keras
from keras import ops

from keras_gmlp.layers.masking import resolve_padding_mask


@keras.saving.register_keras_serializable(package="keras_gmlp")
class MaskedMeanPooling(keras.layers.Layer):
    """Averages `(batch, n, d)` over real tokens only, giving `(batch, d)`.

    With no mask this is a plain mean over tokens (timm's `global_pool="avg"`).
    A row with no real token pools to zeros rather than NaN.

    Call arguments:
        inputs: `(batch, n, d)`.
        padding_mask: optional `(batch, n)`, nonzero for real tokens; a Keras
            mask is used if not given.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, padding_mask=None, mask=None):
        padding_mask = resolve_padding_mask(padding_mask, mask)
        if padding_mask is None:
            return ops.mean(inputs, axis=1)
        weights = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)
        total = ops.sum(inputs * weights, axis=1)
        count = ops.maximum(ops.sum(weights, axis=1), ops.cast(1, inputs.dtype))
        return total / count

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return (input_shape[0], input_shape[-1])
