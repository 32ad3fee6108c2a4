"""Text input pipelines against independent truths: the files written here, the tokenizer's own
eager (pure-Python) path, closed-form masking counts, and uninterrupted-vs-resumed iterators."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

import model_zoo
from keras_gmlp.data import text
from keras_gmlp.data import skipped_counts
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPMaskedLM

SEQ = 16


@pytest.fixture(scope="module")
def corpus():
    return text.default_corpus()[:300]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    vocabulary = text.learn_vocabulary(tf.data.Dataset.from_tensor_slices(corpus), 300)
    return text.make_tokenizer(vocabulary)


@pytest.fixture(scope="module")
def lines(corpus):
    return tf.data.Dataset.from_tensor_slices(corpus[:60])


def _batches(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(count)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)


def _write_tfrecord(path, texts, key="text"):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for t in texts:
            feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode()]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_default_corpus_is_logged_and_is_pydoc_topics(caplog):
    from pydoc_data import topics

    with caplog.at_level(logging.INFO, logger="absl"):
        lines = text.text_lines()
    assert "using default corpus pydoc_data.topics" in caplog.text
    first = [line.decode() for line in lines.take(5).as_numpy_iterator()]
    assert first == text.default_corpus()[:5]
    # Paragraphs lose only whitespace: every word of a topic survives.
    name = sorted(topics.topics)[0]
    words = " ".join(text.default_corpus()).split()
    assert set(topics.topics[name].split()) <= set(words)


def test_plain_text_glob_one_example_per_nonempty_line_and_empty_file_counted(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \nthird\n")
    (tmp_path / "b.txt").write_text("fourth\n   \nfifth")
    (tmp_path / "c.txt").write_text("")
    source = str(tmp_path / "*.txt")
    got = sorted(line.decode() for line in text.text_lines(source).as_numpy_iterator())
    assert got == sorted(["first line", "second line", "third", "fourth", "fifth"])
    assert skipped_counts()[source] == 1


def test_tfrecord_text_skips_and_counts_corrupt_file_and_bad_example(tmp_path):
    good = [f"good record {i}" for i in range(5)]
    _write_tfrecord(tmp_path / "a.tfrecord", good)
    _write_tfrecord(tmp_path / "b.tfrecord", [f"later {i}" for i in range(4)])
    data = bytearray((tmp_path / "b.tfrecord").read_bytes())
    # Records of b are equally long: flip a byte inside record 2's payload (its CRC then fails).
    record = len(data) // 4
    data[2 * record + 20] ^= 0xFF
    (tmp_path / "b.tfrecord").write_bytes(bytes(data))
    _write_tfrecord(tmp_path / "c.tfrecord", ["wrong key"], key="not_text")
    source = "tfrecord:" + str(tmp_path / "*.tfrecord")
    got = sorted(line.decode() for line in text.text_lines(source).as_numpy_iterator())
    assert got == sorted(good + ["later 0", "later 1"])
    assert skipped_counts()[source] == 2  # b's unreadable tail, c's example without "text"


def test_empty_sources_raise_naming_the_source(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        text.text_lines(str(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="blank.txt.*yields no"):
        text.text_lines(str(tmp_path / "blank.txt"))
    with pytest.raises(ValueError, match="matched no files"):
        text.text_lines(str(tmp_path / "missing*.txt"))
    (tmp_path / "e.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="e.tfrecord"):
        text.text_lines("tfrecord:" + str(tmp_path / "e.tfrecord"))


def test_vocabulary_reserved_tokens_and_vocab_txt_round_trip(tmp_path, tokenizer):
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(set(vocabulary)) == len(vocabulary)
    path = text.save_vocabulary(vocabulary, str(tmp_path / "vocab.txt"))
    assert (tmp_path / "vocab.txt").read_text().splitlines() == vocabulary
    assert text.load_vocabulary(path) == vocabulary
    reloaded = text.make_tokenizer(path)
    sentence = "The assert statement raises AssertionError."
    np.testing.assert_array_equal(reloaded(sentence), tokenizer(sentence))


def test_packing_is_lossless_and_fills_every_sequence_but_the_last(tokenizer, corpus):
    lines = corpus[:80]
    packed = list(text.packed_sequences(tf.data.Dataset.from_tensor_slices(lines), tokenizer, SEQ))
    ids = np.stack([p[0].numpy() for p in packed])
    lengths = np.array([int(p[1]) for p in packed])
    # Truth: the tokenizer's eager (pure-Python) path, one line at a time.
    expected = np.concatenate([np.asarray(tokenizer(line)) for line in lines])
    got = np.concatenate([row[:n] for row, n in zip(ids, lengths)])
    np.testing.assert_array_equal(got, expected)
    assert (lengths[:-1] == SEQ).all() and 0 < lengths[-1] <= SEQ
    assert (ids[-1, lengths[-1]:] == 0).all()


def _mlm_elements(tokenizer, lines, **kwargs):
    options = dict(sequence_length=SEQ, batch_size=1, seed=3, shuffle=False, repeat=False)
    options.update(kwargs)
    return [tf.nest.map_structure(lambda t: t.numpy()[0], b) for b in text.mlm_dataset(lines, tokenizer, **options)]


def test_masking_follows_bert_rules_exactly_and_statistically(tokenizer, lines):
    packed = [(p[0].numpy(), int(p[1])) for p in text.packed_sequences(lines, tokenizer, SEQ)]
    elements = _mlm_elements(tokenizer, lines, max_predictions=4)
    assert len(elements) == len(packed) > 200
    vocabulary = tokenizer.get_vocabulary()
    mask_id = vocabulary.index("[MASK]")
    counts = {"mask": 0, "same": 0, "random": 0}
    for (x, mask_ids, weights), (original, length) in zip(elements, packed):
        positions = x["mask_positions"]
        assert x["token_ids"].dtype == np.int32 and positions.dtype == np.int32 and mask_ids.dtype == np.int32
        assert weights.dtype == np.float32
        np.testing.assert_array_equal(x["padding_mask"], (np.arange(SEQ) < length).astype(np.int32))
        # Count: ceil(15% of the real tokens), capped at max_predictions (tensorflow-text's rule).
        n = min(math.ceil(length * 0.15), 4)
        np.testing.assert_array_equal(weights, (np.arange(4) < n).astype(np.float32))
        real = positions[:n]
        assert (np.diff(real) > 0).all() and (real < length).all()
        # Padded mask slots: weight exactly 0, position 0, id 0.
        assert (positions[n:] == 0).all() and (mask_ids[n:] == 0).all()
        np.testing.assert_array_equal(mask_ids[:n], original[real])
        untouched = np.ones(SEQ, bool)
        untouched[real] = False
        np.testing.assert_array_equal(x["token_ids"][untouched], original[untouched])
        new = x["token_ids"][real]
        counts["mask"] += int((new == mask_id).sum())
        counts["same"] += int(((new == original[real]) & (new != mask_id)).sum())
        counts["random"] += int(((new != original[real]) & (new != mask_id)).sum())
    total = sum(counts.values())
    assert total > 700
    # 80/10/10 within ~4 standard deviations; a random draw equal to the original counts as "same".
    tolerance = 4 * math.sqrt(0.8 * 0.2 / total)
    assert abs(counts["mask"] / total - 0.8) < tolerance
    assert abs(counts["same"] / total - 0.1) < 4 * math.sqrt(0.1 * 0.9 / total)
    assert abs(counts["random"] / total - 0.1) < 4 * math.sqrt(0.1 * 0.9 / total)


def test_default_mask_rate_is_fifteen_percent_and_never_truncated(tokenizer, lines):
    elements = _mlm_elements(tokenizer, lines, sequence_length=64)
    selected = sum(float(w.sum()) for _, _, w in elements)
    real = sum(int(x["padding_mask"].sum()) for x, _, _ in elements)
    assert elements[0][0]["mask_positions"].shape == (math.ceil(64 * 0.15),)
    assert abs(selected / real - 0.15) < 0.01


def test_special_tokens_are_never_selected(tokenizer):
    # "[CLS]"/"[SEP]" typed in text are plain characters for the tokenizer, so feed ids directly.
    vocabulary = tokenizer.get_vocabulary()
    cls, sep = vocabulary.index("[CLS]"), vocabulary.index("[SEP]")
    ids = np.full(SEQ, cls, np.int32)
    ids[1::2] = sep
    ids[5] = 100
    from keras_gmlp.data.masking import mask_sequence

    _, positions, mask_ids, weights = mask_sequence(
        ids, SEQ, tf.constant([1, 2], tf.int64), vocabulary_size=len(vocabulary), mask_token_id=4,
        unselectable_ids=[0, cls, sep], selection_rate=0.5, max_selections=3)
    np.testing.assert_array_equal(weights, [1, 0, 0])
    np.testing.assert_array_equal(positions, [5, 0, 0])
    np.testing.assert_array_equal(mask_ids, [100, 0, 0])


def test_same_seed_same_batches_other_seed_other_masks(tokenizer, lines):
    make = lambda seed: text.mlm_dataset(lines, tokenizer, SEQ, 4, seed=seed, shuffle_buffer_size=64)  # noqa: E731
    first = _batches(make(5), 3)
    _assert_batches_equal(first, _batches(make(5), 3))
    other = _batches(make(6), 3)
    assert not np.array_equal(first[0][0]["mask_positions"], other[0][0]["mask_positions"])


def test_iterator_checkpoint_restore_continues_exactly(tmp_path, tokenizer, corpus):
    # A small corpus so the 12 batches cross epoch boundaries (reshuffle) too.
    lines = tf.data.Dataset.from_tensor_slices(corpus[:3])
    make = lambda **kw: text.mlm_dataset(lines, tokenizer, SEQ, 4, seed=11, shuffle_buffer_size=16, **kw)  # noqa: E731
    epoch = sum(1 for _ in text.packed_sequences(lines, tokenizer, SEQ))
    assert epoch < 6 * 4  # the second half starts in another epoch
    uninterrupted = _batches(make(), 12)

    iterator = iter(make())
    for _ in range(6):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt"))
    del iterator

    resumed = iter(make())
    tf.train.Checkpoint(iterator=resumed).restore(path).assert_consumed()
    after = [tf.nest.map_structure(lambda t: t.numpy(), next(resumed)) for _ in range(6)]
    _assert_batches_equal(after, uninterrupted[6:])
    # Where an iterator cannot be checkpointed (tf.distribute), skipping gives the same batches.
    _assert_batches_equal(_batches(make(skip_batches=6), 6), uninterrupted[6:])


def test_sharding_partitions_the_stream_by_element_index(tokenizer, corpus):
    lines = tf.data.Dataset.from_tensor_slices(corpus[:15])
    whole = _mlm_elements(tokenizer, lines, shuffle=True)
    shards = [
        _mlm_elements(tokenizer, lines, shuffle=True,
                      input_context=tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i))
        for i in range(2)
    ]
    # Shard i holds elements i, i+2, ... of the single pipeline, masks included.
    for i in range(2):
        _assert_batches_equal(shards[i], whole[i::2])
    assert len(shards[0]) + len(shards[1]) == len(whole)


def test_mlm_batches_train_gmlp_masked_lm(tokenizer, lines):
    dataset = text.mlm_dataset(lines, tokenizer, model_zoo.N, 4, seed=0)
    x, mask_ids, weights = next(iter(dataset))
    assert x["token_ids"].shape == (4, model_zoo.N) and x["padding_mask"].shape == (4, model_zoo.N)
    assert x["mask_positions"].shape == mask_ids.shape == weights.shape == (4, math.ceil(model_zoo.N * 0.15))
    backbone = GMLPBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, hidden_dim=16, ffn_dim=32,
                            sequence_length=model_zoo.N)
    model = GMLPMaskedLM(backbone)
    model.compile()
    history = model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_bad_arguments_name_argument_and_value(tokenizer, lines):
    with pytest.raises(ValueError, match="`sequence_length`=0"):
        text.mlm_dataset(lines, tokenizer, 0, 4)
    with pytest.raises(ValueError, match="`mask_rate`=1.5"):
        text.mlm_dataset(lines, tokenizer, SEQ, 4, mask_rate=1.5)
    with pytest.raises(ValueError, match="`batch_size`=-1"):
        text.mlm_dataset(lines, tokenizer, SEQ, -1)
    with pytest.raises(ValueError, match="`seed`='x'"):
        text.mlm_dataset(lines, tokenizer, SEQ, 4, seed="x")
    with pytest.raises(ValueError, match="`source`=''"):
        text.text_lines("")
    with pytest.raises(ValueError, match="`vocabulary_size`=3"):
        text.learn_vocabulary(lines, 3)
    with pytest.raises(ValueError, match="batch_size=100000"):
        text.mlm_dataset(lines, tokenizer, SEQ, 100000)
    vocabulary_without_mask = [t for t in tokenizer.get_vocabulary() if t != "[MASK]"]
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        text.mlm_dataset(lines, text.make_tokenizer(vocabulary_without_mask), SEQ, 4)


# ---------------------------------------------------------------------------------------------
# Classification


def test_tsv_with_header_and_malformed_row(tmp_path, tokenizer):
    rows = [("a fine film", 1), ("dull and long", 0), ("the assert statement", 1)]
    body = "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows) + "no label column here\n"
    (tmp_path / "train.tsv").write_text(body)
    source = str(tmp_path / "train.tsv")
    info = text.classification_info(source)
    assert info["num_classes"] == 2 and info["has_header"]
    dataset = text.classification_dataset(source, tokenizer, 8, 2, split="validation")
    batches = list(dataset)
    assert [int(b[1].shape[0]) for b in batches] == [2, 1]
    x = np.concatenate([b[0]["token_ids"].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels, [l for _, l in rows])
    assert batches[0][1].dtype == tf.int32
    for row, (sentence, _) in zip(x, rows):
        expected = np.asarray(tokenizer(sentence))[:8]
        np.testing.assert_array_equal(row[: len(expected)], expected)
        assert (row[len(expected):] == 0).all()
    mask = np.concatenate([b[0]["padding_mask"].numpy() for b in batches])
    np.testing.assert_array_equal(mask, (x != 0).astype(np.int32))
    assert skipped_counts()[source] == 1


def test_csv_without_header_with_named_labels_trains_shapes(tmp_path, tokenizer):
    (tmp_path / "d.csv").write_text('"good, really",pos\nbad,neg\n"meh",neg\nfine,pos\n')
    source = str(tmp_path / "d.csv")
    info = text.classification_info(source)
    assert info["label_names"] == ("neg", "pos") and not info["has_header"]
    dataset = text.classification_dataset(source, tokenizer, 8, 4, split="train", seed=1)
    x, labels = next(iter(dataset))
    assert x["token_ids"].shape == (4, 8) and x["padding_mask"].shape == (4, 8)
    assert sorted(labels.numpy().tolist()) == [0, 0, 1, 1]
    first_tokens = {tuple(np.pad(np.asarray(tokenizer(t))[:3], (0, 3))[:3])
                    for t in ["good, really", "bad", "meh", "fine"]}
    assert {tuple(row[:3]) for row in x["token_ids"].numpy()} == first_tokens


def test_tfds_glue_sst2_read_offline(tokenizer, tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        info = text.classification_info("tfds:glue/sst2", data_dir=str(tmp_path))
        dataset = text.classification_dataset("tfds:glue/sst2", tokenizer, 8, 3, split="validation",
                                              data_dir=str(tmp_path))
        batches = list(dataset)
    assert info["num_classes"] == 2 and info["label_names"] == ("negative", "positive")
    assert sum(int(b[1].shape[0]) for b in batches) == 6
    with pytest.raises(ValueError, match="data_dir"):
        text.classification_dataset("tfds:glue/sst2", tokenizer, 8, 3, data_dir=str(tmp_path))


def _labels_of(dataset):
    return [int(label) for _, labels in dataset for label in labels.numpy()]


def test_labels_come_only_from_rows_the_dataset_reads(tmp_path, tokenizer):
    # Rows with another number of columns than the header, or an empty or negative label, are
    # skipped by the dataset: they must not add classes either.
    body = ("sentence\tlabel\ngood one\tpos\n\n   \ngood two\tneg\nthree\tcolumns\there\n"
            "missing label\n\"quoted\ttab\"\tpos\nempty label\t \ngood three\tpos\n")
    (tmp_path / "t.tsv").write_text(body)
    source = str(tmp_path / "t.tsv")
    info = text.classification_info(source)
    assert info["label_names"] == ("neg", "pos") and info["num_classes"] == 2
    before = skipped_counts().get(source, 0)
    labels = _labels_of(text.classification_dataset(source, tokenizer, 8, 2, split="eval"))
    assert labels == [1, 0, 1]  # good one, good two, good three
    # "three columns here", "missing label", the quoted tab (3 fields) and the empty label.
    assert skipped_counts()[source] - before == 4
    (tmp_path / "ints.tsv").write_text("a\t0\nb\t2\nc\t-1\nd\t1\textra\n")
    source = str(tmp_path / "ints.tsv")
    info = text.classification_info(source)
    assert info["num_classes"] == 3 and info["integer_labels"]  # not 4 nor -1 classes
    assert _labels_of(text.classification_dataset(source, tokenizer, 8, 4, split="eval")) == [0, 2]
    assert skipped_counts()[source] == 2


def test_mixed_integer_and_name_labels_raise_naming_the_file_and_both_kinds(tmp_path):
    (tmp_path / "mixed.tsv").write_text("sentence\tlabel\ngood one\t0\ngood two\t1\nbad label\t5x\n")
    source = str(tmp_path / "mixed.tsv")
    with pytest.raises(ValueError) as error:
        text.classification_info(source)
    message = str(error.value)
    assert "mixed.tsv" in message and "integer class ids" in message and "'0'" in message
    assert "class names" in message and "'5x'" in message and "row 4" in message
    # With `label_names`, every label is a name: "0" and "1" are then skipped as unknown.
    info = text.classification_info(source, label_names=["5x"])
    assert info["label_names"] == ("5x",) and not info["integer_labels"]


def test_binary_vocabulary_or_table_raises_naming_the_file(tmp_path):
    binary = bytes(range(256)) * 4
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n" + binary)
    (tmp_path / "data.tsv").write_bytes(b"sentence\tlabel\nfine\t1\n" + binary)
    (tmp_path / "data.csv").write_bytes(binary)
    with pytest.raises(ValueError, match=r"vocab\.txt.*not UTF-8 text.*line 4.*one token per line"):
        text.load_vocabulary(str(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match=r"vocab\.txt.*not UTF-8"):
        text.make_tokenizer(str(tmp_path / "vocab.txt"))
    for name in ("data.tsv", "data.csv"):
        with pytest.raises(ValueError, match=rf"{name}.*not UTF-8 text.*TSV/CSV of text and label"):
            text.classification_info(str(tmp_path / name))


def test_nul_bytes_and_invalid_utf8_are_cleaned_before_tokenizing(tmp_path, tokenizer):
    # TF Text's in-graph split ends a string at a NUL byte; keras-hub's eager (pure-Python) path
    # splits there and keeps the rest. The pipelines must give the eager path's tokens.
    (tmp_path / "nul.tsv").write_bytes(b"the assert\x00statement\t1\nclass \x00\x00 def\t0\n")
    source = str(tmp_path / "nul.tsv")
    x, labels = next(iter(text.classification_dataset(source, tokenizer, 8, 2, split="eval")))
    for row, sentence in zip(x["token_ids"].numpy(), ["the assert\x00statement", "class \x00\x00 def"]):
        expected = np.asarray(tokenizer.tokenize(sentence))[:8]
        assert len(expected) >= 3
        np.testing.assert_array_equal(row[: len(expected)], expected)
    (tmp_path / "nul.txt").write_bytes(b"a\x00b c\n\xff\x00z\n")
    lines = [line.numpy() for line in text.text_lines(str(tmp_path / "nul.txt"))]
    assert lines == [b"a b c", "\ufffd z".encode()]


def test_labelled_texts_through_the_classifier_preprocessor_equal_classification_dataset(
        tmp_path, tokenizer):
    """The fine-tuning trainer maps GMLPTextClassifierPreprocessor over `labelled_texts`: its
    batches must be `classification_dataset`'s, shuffling, repetition and cleaning included,
    and its iterator must checkpoint (the trainer saves it)."""
    from keras_gmlp.models import GMLPTextClassifierPreprocessor
    from keras_gmlp.models import GMLPTokenizer

    rows = [f"row {i} of the assert statement\x00 and \xff bytes\t{i % 3}" for i in range(11)]
    (tmp_path / "train.tsv").write_bytes(("\n".join(rows) + "\n").encode("utf-8", "surrogateescape"))
    source = str(tmp_path / "train.tsv")
    preprocessor = GMLPTextClassifierPreprocessor(
        GMLPTokenizer(vocabulary=tokenizer.get_vocabulary()), sequence_length=8)
    through_preprocessor = text.labelled_texts(source, 4, seed=5).map(preprocessor)
    expected = text.classification_dataset(source, tokenizer, 8, 4, seed=5)
    _assert_batches_equal(_batches(through_preprocessor, 6), _batches(expected, 6))
    iterator = iter(through_preprocessor)
    next(iterator)
    tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt"))
