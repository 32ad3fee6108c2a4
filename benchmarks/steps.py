"""Compiled Keras training and inference steps, as a user of the library would write them.

The training step is a `tf.function` around a `GradientTape` forward and
backward pass plus the optimizer update (AdamW), so it measures everything a
real training step does except the input pipeline. Inputs are declared with
a `None` batch axis, so one trace serves every batch size.
"""

import keras
import tensorflow as tf


def _spec(value):
    return tf.TensorSpec((None,) + tuple(value.shape[1:]), value.dtype)


def make_train_step(model, example_inputs, example_labels, weighted=False, jit_compile=False):
    """A compiled `step(inputs, labels[, sample_weight]) -> loss` that updates `model`.

    The loss is sparse cross-entropy on the model's float32 logits; with
    `weighted` it is the mean over positions weighted by `sample_weight`
    (masked-LM pre-training on a fixed number of masked slots).
    """
    optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
    optimizer.build(model.trainable_variables)
    reduction = "mean_with_sample_weight" if weighted else "sum_over_batch_size"
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    variables = model.trainable_variables

    def train(x, y, w=None):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits, sample_weight=w)
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        # Variables off the loss's path (keras-hub BERT's pooler) have no gradient.
        optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables) if g is not None])
        return loss

    signature = [tf.nest.map_structure(_spec, example_inputs), _spec(example_labels)]
    if weighted:
        signature.append(tf.TensorSpec(signature[1].shape, tf.float32))
        return tf.function(train, jit_compile=jit_compile, input_signature=signature)
    return tf.function(
        lambda x, y: train(x, y), jit_compile=jit_compile, input_signature=signature
    )


def make_inference_step(model, example_inputs, jit_compile=False):
    """A compiled `step(inputs) -> logits` running `model(inputs, training=False)`."""
    return tf.function(
        lambda x: model(x, training=False),
        jit_compile=jit_compile,
        input_signature=[tf.nest.map_structure(_spec, example_inputs)],
    )
