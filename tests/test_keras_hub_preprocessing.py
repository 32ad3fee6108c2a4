"""The keras-hub preprocessors against keras_gmlp.data's pipelines (the trainers' truth)."""

import numpy as np

from keras_gmlp import data
from keras_gmlp.models import GMLPMaskedLMPreprocessor
from keras_gmlp.models import GMLPTextClassifierPreprocessor
from keras_gmlp.models import GMLPTokenizer

LINES = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps", "Dogs and cats run fast.",
         "the fox sleeps and the dog runs over the quick cat again and again", "fast"]


def test_tokenizer_from_corpus_tokenizes_as_make_tokenizer():
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == list(data.RESERVED_TOKENS) and tokenizer.pad_token_id == 0
    import tensorflow as tf

    reference = data.make_tokenizer(vocabulary)
    lines = tf.data.Dataset.from_tensor_slices(LINES)
    want = [ids.numpy() for ids in lines.map(reference)]  # the pipelines' (TensorFlow) path
    got_graph = [ids.numpy() for ids in lines.map(tokenizer)]
    for line, w, g in zip(LINES, want, got_graph):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(np.asarray(tokenizer(line)), w)  # keras-hub's eager path


def test_classifier_preprocessor_matches_classification_dataset(tmp_path):
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{line}\t{i % 2}\n" for i, line in enumerate(LINES)))
    pipeline = data.classification_dataset(str(tsv), data.make_tokenizer(tokenizer.get_vocabulary()),
                                           sequence_length=6, batch_size=len(LINES), split="test")
    (want, labels), = list(pipeline)
    got, got_labels = GMLPTextClassifierPreprocessor(tokenizer, sequence_length=6)(LINES, labels)
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(np.asarray(got[key]), want[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(np.asarray(got_labels), labels.numpy())


def test_masked_lm_preprocessor_follows_berts_80_10_10_rule():
    tokenizer = GMLPTokenizer.from_corpus(LINES, vocabulary_size=60)
    texts = [" ".join(LINES)] * 64
    preprocessor = GMLPMaskedLMPreprocessor(tokenizer, sequence_length=64, mask_selection_rate=0.5, seed=7)
    x, mask_ids, weights = (np.asarray(t) if not isinstance(t, dict) else {k: np.asarray(v) for k, v in t.items()}
                            for t in preprocessor(texts))
    original = np.asarray(GMLPTextClassifierPreprocessor(tokenizer, sequence_length=64)(texts)["token_ids"])
    rows = np.repeat(np.arange(len(texts))[:, None], mask_ids.shape[1], axis=1)
    chosen = weights > 0
    # Targets are the original tokens at the chosen positions; nothing else changed.
    np.testing.assert_array_equal(mask_ids[chosen], original[rows[chosen], x["mask_positions"][chosen]])
    untouched = np.ones_like(original, bool)
    untouched[rows[chosen], x["mask_positions"][chosen]] = False
    np.testing.assert_array_equal(x["token_ids"][untouched], original[untouched])
    # ceil(50% of the real tokens) are chosen, and 80% / 10% / 10% become [MASK] / random / kept.
    real = x["padding_mask"].sum(1)
    np.testing.assert_array_equal(chosen.sum(1), np.ceil(real * 0.5))
    replaced = x["token_ids"][rows[chosen], x["mask_positions"][chosen]]
    mask_share = np.mean(replaced == tokenizer.mask_token_id)
    kept_share = np.mean(replaced == mask_ids[chosen])
    assert abs(mask_share - 0.8) < 0.03 and 0.07 < kept_share < 0.16, (mask_share, kept_share)
    # A second call draws new masks (on the fly), unlike the data pipeline's fixed seeds.
    again = preprocessor(texts)[0]["mask_positions"]
    assert not np.array_equal(np.asarray(again), x["mask_positions"])
