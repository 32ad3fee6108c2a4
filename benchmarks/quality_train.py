"""Training of the quality benchmark: one recipe for every model, a held-out learning curve.

Every model trains with `keras.Model.fit` (what a keras-hub task user calls), AdamW with
weight decay 0.01 (none on LayerNorm scales/offsets and biases), global gradient clipping at 1,
a linear warmup then cosine decay to 0, on a seeded stream of batches. `fit_curve` evaluates
the held-out metric at a few steps while training; evaluation time is not counted in `train_s`.
"""

import time

NO_WEIGHT_DECAY = r"(^|/)(gamma|beta)(:\d+)?$|bias(:\d+)?$"


def optimizer(learning_rate, steps, warmup):
    import keras

    warmup = min(warmup, max(steps - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(steps - warmup, 1), warmup_target=learning_rate, warmup_steps=warmup)
    opt = keras.optimizers.AdamW(schedule, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                                 global_clipnorm=1.0)
    opt.exclude_from_weight_decay(var_names=[NO_WEIGHT_DECAY])
    return opt


def eval_steps(steps, points):
    """`points` evaluation steps spread over a run of `steps`, the last one included."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


class _Curve:
    """A Keras callback-like recorder: the held-out metric at chosen steps, its time excluded."""

    def __init__(self, evaluate, at):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                step = batch + 1
                if step in outer.at:
                    start = time.perf_counter()
                    outer.points.append((step, outer.evaluate()))
                    outer.eval_s += time.perf_counter() - start

        self.evaluate, self.at, self.points, self.eval_s = evaluate, set(at), [], 0.0
        self.callback = Callback()


def fit_curve(model, dataset, *, steps, learning_rate, warmup, loss, evaluate, eval_points, seed,
              eager=False):
    """Trains `model` for `steps` batches of `dataset`; returns (train seconds without
    evaluation, [(step, held-out metric)], final training loss). `evaluate()` -> metric.

    `eager` (the quick mode) skips tracing, which costs more than a few tiny steps.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=optimizer(learning_rate, steps, warmup), loss=loss, run_eagerly=eager)
    curve = _Curve(evaluate, eval_steps(steps, eval_points))
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[curve.callback])
    seconds = time.perf_counter() - start - curve.eval_s
    return seconds, curve.points, float(history.history["loss"][-1])


def predict(model, inputs, eager):
    if eager:
        return model(inputs, training=False).numpy()
    return model.predict_on_batch(inputs)


def array_stream(inputs, labels, batch_size, seed):
    """A seeded, reshuffled, endless tf.data stream of (inputs, labels) batches of arrays."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def top1(model, inputs, labels, eager, batch_size=500):
    """Held-out top-1 accuracy of `model` on (inputs, labels) arrays (inputs: array or dict)."""
    import numpy as np

    correct = 0
    for start in range(0, len(labels), batch_size):
        if isinstance(inputs, dict):
            x = {k: v[start:start + batch_size] for k, v in inputs.items()}
        else:
            x = inputs[start:start + batch_size]
        logits = predict(model, x, eager)
        correct += int(np.sum(np.argmax(logits, -1) == labels[start:start + batch_size]))
    return correct / len(labels)
