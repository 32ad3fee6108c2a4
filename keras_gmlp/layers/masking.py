"""Helpers shared by the layers for padding masks (keras.ops only)."""

from keras import ops

from keras_gmlp.validation import check


def resolve_padding_mask(padding_mask, keras_mask):
    """Returns the explicit `padding_mask` if given, else the Keras mask, else None."""
    return padding_mask if padding_mask is not None else keras_mask


def check_sequence_length(layer_name, length, sequence_length):
    """Raises ValueError when a static input length exceeds the layer's sequence_length."""
    check(length is None or length <= sequence_length, f"{layer_name} input length", length,
          f"at most sequence_length={sequence_length}, the length the layer was built for "
          f"(inputs may be shorter: the spatial weights are sliced)")


def causal_mask(length):
    """(length, length) boolean matrix, True where column j <= row i."""
    positions = ops.arange(length)
    return ops.greater_equal(ops.expand_dims(positions, 1), ops.expand_dims(positions, 0))
