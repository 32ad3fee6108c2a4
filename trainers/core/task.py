"""What a trainer supplies to the shared loop: model, data, loss, metrics, export."""


class Task:
    """Base class of the trainers' tasks; `trainers.core.loop.run` drives one.

    Subclasses set `default_model` and implement the methods below. `prepare` may read data
    (e.g. learn a vocabulary) but writes nothing: a resumed run's model_dir is only written once
    its checkpoint restored, through `write_run_files`.
    """

    default_model = None

    def __init__(self, flag_values):
        self.flags = flag_values

    def prepare(self, model_dir, is_chief):
        """Everything `build_model` and the datasets need (vocabulary, dataset info)."""

    def write_run_files(self, model_dir):
        """Writes what later runs read from model_dir (e.g. vocab.txt); chief only."""

    def build_model(self):
        """Returns the keras.Model to train; called inside `strategy.scope()`."""
        raise NotImplementedError

    def initialize_from_pretrained(self, model):
        """Loads pretrained weights into a fresh model (not called when resuming)."""

    def train_dataset(self, batch_size, input_context=None):
        """An infinite, deterministic tf.data.Dataset of batches of `batch_size` (drop_remainder).

        Without `input_context` these are the global batches. With one (a
        `tf.distribute.InputContext`, --per_worker_input on several workers), `batch_size` is
        the per-worker share and the pipeline must shard its stream by element index with it
        (the `input_context` argument of `keras_gmlp.data`'s pipelines), so that pipeline p's
        batch t holds elements p, p + P, ... of the global batch t.
        """
        raise NotImplementedError

    def eval_dataset(self, global_batch_size):
        """A tf.data.Dataset of evaluation batches, or None."""
        return None

    def loss_terms(self, model, batch, training):
        """Runs in a replica context on this replica's share of a batch.

        Returns `(loss_sum, normaliser, sums)`: the summed (weighted) per-example loss, the
        summed weights it should be divided by, and a dict of float32 scalar sums for the
        metrics. The loop divides `loss_sum` by the normaliser summed over ALL replicas, so the
        loss and its gradient do not depend on how the batch is split.
        """
        raise NotImplementedError

    def metrics(self, sums):
        """Turns summed statistics (over replicas and batches) into named metrics."""
        raise NotImplementedError

    def preprocessor(self):
        """The keras-hub preprocessor matching `train_dataset`'s inputs (saved with the final
        model in MODEL_DIR/preset, so `fit`/`predict` on raw inputs prepare them as the run
        did), or None."""
        return None

    def export(self, model, export_dir):
        """Writes a SavedModel under export_dir; returns its path."""
        raise NotImplementedError
