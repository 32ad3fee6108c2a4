"""Text pipelines: raw lines, WordPiece vocabulary/tokenizer, packed masked-LM batches, classification.

Sources (`source` argument):
- None: the default corpus, paragraphs of CPython's `pydoc_data.topics` (ships with Python).
- a glob of plain-text files: one example per non-empty line (stripped). Line breaks do not
  matter for masked-LM pretraining, which packs all tokens into one stream.
- "tfrecord:GLOB": `tf.train.Example` records with a bytes feature "text".
- "tfds:NAME[/CONFIG]": a TFDS dataset already prepared in `data_dir` (read offline).
"""

import csv
import math
import re

import keras_hub
import tensorflow as tf
from absl import logging

from keras_gmlp.data import _common
from keras_gmlp.data import _tfds
from keras_gmlp.data.masking import mask_sequence

AUTOTUNE = tf.data.AUTOTUNE

# [PAD] must be id 0: padding masks and MaskedLMHead's padded mask slots rely on it.
RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

DEFAULT_CORPUS_NAME = "pydoc_data.topics"


def default_corpus():
    """Paragraphs of CPython's `pydoc_data.topics` (about 465k characters of English docs).

    Paragraphs are the blank-line separated blocks of each topic, whitespace collapsed.
    """
    from pydoc_data import topics

    paragraphs = []
    for name in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[name]):
            text = " ".join(block.split())
            if text:
                paragraphs.append(text)
    return paragraphs


def clean_text(text):
    """What every text pipeline does to a string before tokenizing it (and so do the exports'
    raw-text signatures): invalid UTF-8 becomes U+FFFD (it would make the tokenizer's
    normalisation fail on a whole batch), a NUL byte a space (TF Text's in-graph splitting ends
    a string at a NUL; keras-hub's Python path splits there), surrounding whitespace is stripped.
    """
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
    text = tf.strings.regex_replace(text, r"\x00", " ")
    return tf.strings.strip(text)


def _text_files(pattern, source):
    files = _common.glob_files(pattern, source)
    counter = _common.skip_counter(source)
    readable = []
    for path in files:
        if tf.io.gfile.stat(path).length == 0:
            counter.add("empty file", path)
        else:
            readable.append(path)
    if not readable:
        raise ValueError(f"`source`={source!r}: every matching file is empty ({len(files)} files).")
    return tf.data.Dataset.from_tensor_slices(readable).interleave(
        tf.data.TextLineDataset,
        cycle_length=min(4, len(readable)),
        block_length=64,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def _tfrecord_text(pattern, source, text_key):
    counter = _common.skip_counter(source)
    records = _common.tfrecords(_common.glob_files(pattern, source), counter)
    if records is None:
        raise ValueError(f"`source`={source!r}: every matching TFRecord file is empty.")
    key = text_key or "text"
    spec = {key: tf.io.FixedLenFeature([], tf.string)}
    return _common.try_map(
        records,
        lambda record: tf.io.parse_single_example(record, spec)[key],
        tf.constant(b""),
        counter,
        f'tf.train.Example without a bytes feature "{key}"',
        lambda record: tf.strings.join([source, ": record of ", tf.strings.as_string(tf.strings.length(record)), " bytes"]),
    )


def text_lines(source=None, data_dir=None, split="train", *, text_key=None):
    """A `tf.data.Dataset` of scalar `tf.string` examples, in a fixed order.

    Args:
        source: None (default corpus, logged), a glob of plain-text files (one example per
            non-empty line), "tfrecord:GLOB" (tf.train.Example with bytes feature "text"), or
            "tfds:NAME[/CONFIG]" read offline from `data_dir`.
        data_dir: TFDS data directory (TFDS sources only; None = TFDS' default).
        split: TFDS split (TFDS sources only; files have no splits: pass a different glob).
        text_key: feature name holding the text in TFRecord/TFDS examples (default: "text"
            for TFRecords, the first text feature for TFDS).

    Empty files and corrupt records are skipped, counted and logged
    (`keras_gmlp.data.skipped_counts()`); a source that yields nothing raises ValueError.
    """
    kind, rest = _common.split_source(source)
    if kind == "default":
        paragraphs = default_corpus()
        logging.info("using default corpus %s (%d paragraphs); pass a source to train on your own text",
                     DEFAULT_CORPUS_NAME, len(paragraphs))
        lines = tf.data.Dataset.from_tensor_slices(paragraphs)
    elif kind == "files":
        lines = _text_files(rest, source)
    elif kind == "tfrecord":
        lines = _tfrecord_text(rest, source, text_key)
    else:
        builder, examples = _tfds.load(rest, split, data_dir, source)
        key = _tfds.feature_key(builder, "text", text_key, source, "text_key")
        lines = examples.map(lambda example: example[key], num_parallel_calls=AUTOTUNE, deterministic=True)
    lines = lines.map(clean_text, num_parallel_calls=AUTOTUNE, deterministic=True)
    lines = lines.filter(lambda line: tf.strings.length(line) > 0)
    _common.require_elements(lines, 1, source, "non-empty text")
    return lines.with_options(_common.deterministic_options())


def learn_vocabulary(lines_dataset, vocabulary_size, *, lowercase=True, max_lines=None):
    """Learn a WordPiece vocabulary with `keras_hub.tokenizers.compute_word_piece_vocabulary`.

    Args:
        lines_dataset: dataset of scalar strings (e.g. from `text_lines`).
        vocabulary_size: target size, including the reserved tokens.
        lowercase: must match the tokenizer's `lowercase`.
        max_lines: learn from the first `max_lines` examples only (None: all).
    Returns:
        list of tokens, `RESERVED_TOKENS` first ("[PAD]" is id 0).
    """
    _common.check_positive_int("vocabulary_size", vocabulary_size)
    _common.check(vocabulary_size > len(RESERVED_TOKENS), "vocabulary_size", vocabulary_size,
                  f"more than the {len(RESERVED_TOKENS)} reserved tokens")
    if max_lines is not None:
        _common.check_positive_int("max_lines", max_lines)
        lines_dataset = lines_dataset.take(max_lines)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        lines_dataset.batch(1024),
        vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=list(RESERVED_TOKENS),
    )
    vocabulary = list(vocabulary)
    if vocabulary[: len(RESERVED_TOKENS)] != list(RESERVED_TOKENS):
        raise RuntimeError(f"compute_word_piece_vocabulary did not put {RESERVED_TOKENS} first: {vocabulary[:8]}")
    logging.info("learned a WordPiece vocabulary of %d tokens", len(vocabulary))
    return vocabulary


def save_vocabulary(vocabulary, path):
    """Write `vocabulary` to `path` (vocab.txt: one token per line, id = line number). Returns path."""
    _common.check(len(vocabulary) > 0, "vocabulary", f"<{len(vocabulary)} tokens>", "a non-empty list of tokens")
    for token in vocabulary:
        if not token or "\n" in token:
            raise ValueError(f"`vocabulary` token {token!r}: expected a non-empty token without newlines.")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(vocabulary) + "\n")
    return path


def load_vocabulary(path):
    """Read a vocab.txt (one token per line, as written by `save_vocabulary` or BERT)."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"`path`={path!r}: no such vocabulary file.")
    text = _read_utf8(path, "path", path, "a UTF-8 text file of one token per line (vocab.txt)")
    vocabulary = [line.rstrip("\r") for line in text.split("\n")]
    while vocabulary and not vocabulary[-1]:
        vocabulary.pop()
    if not vocabulary:
        raise ValueError(f"`path`={path!r}: the vocabulary file is empty.")
    return vocabulary


def _read_utf8(path, argument, value, expected):
    """The text of `path`; ValueError naming the file when it is not UTF-8 (a binary file)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"`{argument}`={value!r}: " + ("" if value == path else f"file {path!r} ")
            + f"is not UTF-8 text (byte "
            f"{data[error.start:error.start + 1]!r} at offset {error.start}, line {line}): "
            f"expected {expected}."
        ) from None


def make_tokenizer(vocabulary, sequence_length=None, lowercase=True):
    """A `keras_hub.tokenizers.WordPieceTokenizer` over `vocabulary`.

    Args:
        vocabulary: list of tokens, or a vocab.txt path.
        sequence_length: if set, the tokenizer pads/truncates to it (dense output).
        lowercase: must match `learn_vocabulary`'s.
    """
    if isinstance(vocabulary, str):
        vocabulary = load_vocabulary(vocabulary)
    vocabulary = list(vocabulary)
    _common.check(len(vocabulary) > 0, "vocabulary", vocabulary, "a non-empty list of tokens or a vocab.txt path")
    if sequence_length is not None:
        _common.check_positive_int("sequence_length", sequence_length)
    _common.check("[UNK]" in vocabulary, "vocabulary", f"<{len(vocabulary)} tokens: {vocabulary[:5]}...>",
                  'a vocabulary containing the out-of-vocabulary token "[UNK]"')
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        sequence_length=sequence_length,
        lowercase=lowercase,
        special_tokens=[token for token in RESERVED_TOKENS if token in vocabulary],
    )


def tokenize_to_length(tokenizer, texts, sequence_length):
    """Strings -> `(token_ids, padding_mask)` int32 of shape `texts.shape + (sequence_length,)`.

    The one tokenization of classification inputs: `classification_dataset` and the keras-hub
    preprocessors (`GMLPTextClassifierPreprocessor`, `GMLPMaskedLMPreprocessor`) call it. Each
    text is cleaned (`clean_text`), tokenized, truncated to `sequence_length` and padded with
    [PAD] = 0, without [CLS]/[SEP]; `padding_mask = token_ids != 0`.

    Args:
        tokenizer: a keras-hub tokenizer without `sequence_length` (`make_tokenizer`,
            `GMLPTokenizer`); one with a `sequence_length` is truncated/padded again here.
        texts: a scalar or 1-D string tensor.
        sequence_length: tokens per text.
    """
    _common.check_positive_int("sequence_length", sequence_length)
    texts = tf.convert_to_tensor(texts, tf.string)
    unbatched = texts.shape.rank == 0
    if unbatched:
        texts = texts[None]
    ids = tokenizer(clean_text(texts))
    if isinstance(ids, list):  # keras-hub's pure-Python tokenizer path (some eager calls)
        ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
    if isinstance(ids, tf.RaggedTensor):
        ids = ids[:, :sequence_length].to_tensor(shape=[None, sequence_length])
    else:
        ids = ids[:, :sequence_length]
        ids = tf.pad(ids, [[0, 0], [0, sequence_length - tf.shape(ids)[1]]])
    ids = tf.cast(ids, tf.int32)
    padding_mask = tf.cast(ids != 0, tf.int32)
    if unbatched:
        return ids[0], padding_mask[0]
    return ids, padding_mask


def _token_id(tokenizer, token, purpose):
    vocabulary = tokenizer.get_vocabulary()
    if token not in vocabulary:
        raise ValueError(f"`tokenizer`: its vocabulary has no {token!r} token, needed for {purpose}.")
    return vocabulary.index(token)


def _tokenize_lines(lines, tokenizer, batch=256):
    """Dataset of 1-D int32 token ids, one element per line, order kept."""
    def _tokens(texts):
        ids = tokenizer(texts)
        if not isinstance(ids, tf.RaggedTensor):
            raise ValueError("`tokenizer`: expected one without a sequence_length (ragged output) for packing.")
        return tf.cast(ids.flat_values, tf.int32)

    return lines.batch(batch).map(_tokens, num_parallel_calls=AUTOTUNE, deterministic=True)


def packed_sequences(lines, tokenizer, sequence_length):
    """Concatenate-and-split packing: dataset of ((sequence_length,) int32 ids, int32 length).

    All tokens of all lines, in order, cut into consecutive chunks; only the last chunk is
    shorter (padded with [PAD] = 0). No [CLS]/[SEP] are inserted.
    """
    _common.check_positive_int("sequence_length", sequence_length)
    tokens = _tokenize_lines(lines, tokenizer).unbatch()
    chunks = tokens.batch(sequence_length)

    def _pad(chunk):
        length = tf.shape(chunk)[0]
        ids = tf.pad(chunk, [[0, sequence_length - length]])
        return tf.ensure_shape(ids, [sequence_length]), length

    return chunks.map(_pad, num_parallel_calls=AUTOTUNE, deterministic=True)


def mlm_dataset(
    lines,
    tokenizer,
    sequence_length,
    batch_size,
    mask_rate=0.15,
    max_predictions=None,
    seed=0,
    shuffle=True,
    repeat=True,
    input_context=None,
    *,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    shuffle_buffer_size=10_000,
    num_parallel_calls=AUTOTUNE,
    skip_batches=0,
):
    """Packed, masked batches `(x, mask_ids, mask_weights)` for `GMLPMaskedLM`.

    Pipeline: tokenize (batched, parallel) -> concatenate-and-split packing into
    `sequence_length` chunks (no [CLS]/[SEP]; gMLP pretraining has no sentence-pair task) ->
    shuffle (seeded, reshuffled each epoch) -> repeat -> enumerate -> shard -> mask -> batch
    (drop_remainder) -> prefetch.

    Masking follows BERT / `keras_hub.layers.MaskedLMMaskGenerator` (see
    `keras_gmlp.data.masking`), with [PAD], [CLS], [SEP] unselectable, but each element's
    randomness is a stateless function of (`seed`, its index in the shuffled, repeated stream).
    So the stream depends only on `seed`, a checkpointed iterator
    (`tf.train.Checkpoint(iterator=...)`) resumes with exactly the batches an uninterrupted
    run would see, and any sharding (`input_context`) masks each sequence as one pipeline would.

    Args:
        lines: dataset of scalar strings (`text_lines`), or a source for `text_lines`.
        tokenizer: `WordPieceTokenizer` without sequence_length (`make_tokenizer`).
        sequence_length: tokens per packed sequence.
        batch_size: examples per batch emitted by this pipeline (per replica under
            `distribute_datasets_from_function`: pass the per-replica size).
        mask_rate: fraction of tokens selected for prediction.
        max_predictions: mask slots per sequence (default ceil(sequence_length * mask_rate),
            which never truncates the selection).
        seed: int seed for shuffling and masking.
        shuffle, repeat: shuffle packed sequences / repeat forever.
        input_context: `tf.distribute.InputContext`; the stream is sharded by element index
            across `num_input_pipelines` (disjoint, covering).
        skip_batches: start after this many batches of this pipeline, exactly as if they had
            been read (for resuming where the iterator itself cannot be checkpointed, e.g. a
            tf.distribute iterator); skipped sequences are not masked.
    Returns:
        dataset of (x, mask_ids, mask_weights): x = {"token_ids", "padding_mask",
        "mask_positions"} int32 of shapes (batch_size, sequence_length) and
        (batch_size, max_predictions); mask_ids int32 and mask_weights float32 of shape
        (batch_size, max_predictions).
    """
    _common.check_positive_int("sequence_length", sequence_length)
    _common.check_positive_int("batch_size", batch_size)
    _common.check_seed(seed)
    _common.check(isinstance(mask_rate, (int, float)) and 0 < mask_rate < 1, "mask_rate", mask_rate, "a float in (0, 1)")
    for name, rate in (("mask_token_rate", mask_token_rate), ("random_token_rate", random_token_rate)):
        _common.check(isinstance(rate, (int, float)) and 0 <= rate <= 1, name, rate, "a float in [0, 1]")
    _common.check(mask_token_rate + random_token_rate <= 1, "mask_token_rate + random_token_rate",
                  mask_token_rate + random_token_rate, "at most 1")
    if max_predictions is None:
        max_predictions = math.ceil(sequence_length * mask_rate)
    _common.check_positive_int("max_predictions", max_predictions)
    _common.check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    if not isinstance(tokenizer, keras_hub.tokenizers.Tokenizer):
        raise ValueError(f"`tokenizer`={tokenizer!r}: expected a keras_hub tokenizer (make_tokenizer).")
    if getattr(tokenizer, "sequence_length", None) is not None:
        raise ValueError(f"`tokenizer`: has sequence_length={tokenizer.sequence_length}; expected None "
                         "(packing needs the untruncated tokens).")

    if lines is None or isinstance(lines, str):
        lines = text_lines(lines)
    mask_id = _token_id(tokenizer, "[MASK]", "masking")
    vocabulary = tokenizer.get_vocabulary()
    unselectable = [vocabulary.index(t) for t in ("[PAD]", "[CLS]", "[SEP]") if t in vocabulary]
    if 0 not in unselectable:
        unselectable.append(0)  # padding id, whatever its name
    vocabulary_size = tokenizer.vocabulary_size()

    sequences = packed_sequences(lines, tokenizer, sequence_length)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    _common.require_elements(sequences, batch_size * pipelines, "lines",
                             f"packed sequences of {sequence_length} tokens (batch_size={batch_size}"
                             f" x {pipelines} input pipeline(s))")
    if shuffle:
        sequences = sequences.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        sequences = sequences.repeat()
    sequences = _common.shard(sequences.enumerate(), input_context)
    _common.check(isinstance(skip_batches, int) and skip_batches >= 0, "skip_batches", skip_batches, "an int >= 0")
    if skip_batches:
        sequences = sequences.skip(skip_batches * batch_size)

    def _mask(index, element):
        ids, length = element
        masked, positions, mask_ids, weights = mask_sequence(
            ids,
            length,
            _common.element_seed(seed, index),
            vocabulary_size=vocabulary_size,
            mask_token_id=mask_id,
            unselectable_ids=unselectable,
            selection_rate=mask_rate,
            max_selections=max_predictions,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
        )
        x = {
            "token_ids": masked,
            "padding_mask": tf.cast(tf.range(sequence_length) < length, tf.int32),
            "mask_positions": positions,
        }
        return x, mask_ids, weights

    dataset = sequences.map(_mask, num_parallel_calls=num_parallel_calls, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    return dataset.with_options(_common.deterministic_options())


# ---------------------------------------------------------------------------------------------
# Classification

_TEXT_HEADER_NAMES = ("sentence", "text", "review", "content", "sentence1")
_LABEL_HEADER_NAMES = ("label", "labels")


def _delimiter(path):
    return "," if path.lower().endswith(".csv") else "\t"


def _read_rows(path, source):
    delimiter = _delimiter(path)
    text = _read_utf8(path, "source", source, "a UTF-8 TSV/CSV of text and label columns")
    lines = [line.rstrip("\r") for line in text.split("\n")]  # as tf.data.TextLineDataset splits
    if delimiter == ",":
        return [row for row in csv.reader(lines) if row]
    return [line.split("\t") for line in lines if line.strip()]


_INTEGER_LABEL = re.compile(r"^[+-]?[0-9]+$")


def _is_int(text):
    return bool(_INTEGER_LABEL.match(text))


def _column_index(wanted, header, argument, source):
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        return wanted
    if header is None or wanted not in header:
        raise ValueError(f"`{argument}`={wanted!r}: not a column of {source!r} (header: {header}).")
    return header.index(wanted)


def _file_table_info(source, text_column, label_column, label_names):
    files = _common.glob_files(source, source)
    rows_by_file = [_read_rows(path, source) for path in files]
    first = next((rows[0] for rows in rows_by_file if rows), None)
    if first is None:
        raise ValueError(f"`source`={source!r}: every matching file is empty.")
    lowered = [cell.strip().lower() for cell in first]
    has_header = any(name in lowered for name in _LABEL_HEADER_NAMES) or any(
        isinstance(c, str) and c in first for c in (text_column, label_column)
    )
    header = [cell.strip() for cell in first] if has_header else None
    if text_column is None:
        if header is None:
            text_column = 0
        else:
            text_column = next((lowered.index(n) for n in _TEXT_HEADER_NAMES if n in lowered), None)
            if text_column is None:
                raise ValueError(f"`text_column`=None: no column of {source!r} is named one of "
                                 f"{_TEXT_HEADER_NAMES} (header: {header}); pass text_column.")
    if label_column is None:
        if header is None:
            label_column = 1
        else:
            label_column = next(lowered.index(n) for n in _LABEL_HEADER_NAMES if n in lowered)
    text_index = _column_index(text_column, header, "text_column", source)
    label_index = _column_index(label_column, header, "label_column", source)
    # Labels come only from rows the dataset reads (`_file_examples`); the others are skipped
    # there and counted: a row with another number of columns than the first, an empty label,
    # a negative class id, or (with `label_names`) a label not among them.
    int_labels, name_labels = {}, {}  # label -> (file, row number) of its first row
    for path, rows in zip(files, rows_by_file):
        for number, row in enumerate(rows[1 if has_header else 0 :], start=2 if has_header else 1):
            if len(row) != len(first):
                continue
            label = row[label_index].strip()
            if not label or (_is_int(label) and int(label) < 0):
                continue
            kind = int_labels if _is_int(label) else name_labels
            kind.setdefault(label, (path, number))
    if label_names is not None:
        label_names = tuple(label_names)
        num_classes = len(label_names)
    elif int_labels and name_labels:
        int_example, name_example = min(int_labels.items(), key=lambda item: item[1]), min(
            name_labels.items(), key=lambda item: item[1])
        raise ValueError(
            f"`source`={source!r}: the label column mixes integer class ids ({len(int_labels)} "
            f"distinct, e.g. {int_example[0]!r} in {int_example[1][0]!r} row {int_example[1][1]}) "
            f"and class names ({len(name_labels)} distinct, e.g. {name_example[0]!r} in "
            f"{name_example[1][0]!r} row {name_example[1][1]}): expected one kind (fix those "
            f"rows, or pass `label_names` to read every label as a name)."
        )
    elif int_labels:
        num_classes = max(int(label) for label in int_labels) + 1
        label_names = tuple(str(i) for i in range(num_classes))
    else:
        label_names = tuple(sorted(name_labels))
        num_classes = len(label_names)
    if num_classes == 0:
        raise ValueError(f"`source`={source!r} yields no labelled rows.")
    return {
        "num_classes": num_classes,
        "label_names": label_names,
        "text_column": text_index,
        "label_column": label_index,
        "has_header": has_header,
        "num_columns": len(first),
        "integer_labels": not name_labels and label_names == tuple(
            str(i) for i in range(num_classes)),
        "files": files,
    }


def classification_info(source, split="train", data_dir=None, *, text_column=None, label_column=None,
                        label_names=None):
    """{"num_classes", "label_names", ...} for a classification source (see `classification_dataset`)."""
    kind, rest = _common.split_source(source)
    _common.check(kind in ("files", "tfds"), "source", source, 'TSV/CSV file glob or "tfds:NAME"')
    if kind == "files":
        return _file_table_info(source, text_column, label_column, label_names)
    builder, _ = _tfds.load(rest, split, data_dir, source)
    text_key = _tfds.feature_key(builder, "text", text_column, source, "text_column")
    label_key = _tfds.feature_key(builder, "label", label_column, source, "label_column")
    feature = builder.info.features[label_key]
    return {
        "num_classes": feature.num_classes,
        "label_names": tuple(feature.names),
        "text_column": text_key,
        "label_column": label_key,
    }


def _file_examples(info, source):
    counter = _common.skip_counter(source)
    label_names = info["label_names"]
    integer = info["integer_labels"]
    table = None
    if not integer:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(list(label_names), list(range(len(label_names))),
                                                key_dtype=tf.string, value_dtype=tf.int64),
            default_value=-1,
        )

    def _lines(path):
        lines = tf.data.TextLineDataset(path)
        if info["has_header"]:
            lines = lines.skip(1)
        return lines

    files = info["files"]
    lines = tf.data.Dataset.from_tensor_slices(files).flat_map(_lines)
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    delimiter = _delimiter(files[0])
    columns = [info["text_column"], info["label_column"]]

    def _parse(line):
        fields = tf.io.decode_csv(line, [""] * info["num_columns"], field_delim=delimiter,
                                  use_quote_delim=delimiter == ",")
        text, label_text = fields[columns[0]], tf.strings.strip(fields[columns[1]])
        if integer:
            label = tf.strings.to_number(label_text, tf.int32)
        else:
            label = tf.cast(table.lookup(label_text), tf.int32)
        tf.debugging.assert_non_negative(label, "unknown label")
        tf.debugging.assert_less(label, len(label_names), "label out of range")
        return text, label

    return _common.try_map(
        lines,
        _parse,
        (tf.constant(b""), tf.constant(0, tf.int32)),
        counter,
        "malformed row",
        lambda line: tf.strings.substr(line, 0, 80),
    )


def classification_dataset(
    source,
    tokenizer,
    sequence_length,
    batch_size,
    split="train",
    data_dir=None,
    seed=0,
    shuffle=None,
    repeat=None,
    input_context=None,
    *,
    text_column=None,
    label_column=None,
    label_names=None,
    drop_remainder=None,
    shuffle_buffer_size=10_000,
    num_parallel_calls=AUTOTUNE,
):
    """Batches `({"token_ids", "padding_mask"}, label int32)` for `GMLPTextClassifier`.

    Sources:
    - TSV (or .csv) file glob. A first row naming a "label" column (or naming the requested
      columns) is a header; the text column is then the first of "sentence", "text", "review",
      "content", "sentence1". Without a header: text is column 0, label column 1. Override with
      `text_column`/`label_column` (index or header name). Labels are ints 0..K-1, or names
      (sorted, or in the order of `label_names`). One row per line; malformed rows are skipped
      and counted.
    - "tfds:NAME" (e.g. "tfds:glue/sst2") prepared in `data_dir`: its first text feature and
      its ClassLabel feature (or the named `text_column` / `label_column`).

    Texts are tokenized by `tokenize_to_length` (cleaned, truncated/padded to
    `sequence_length`, without [CLS]/[SEP] as in pretraining), as
    `GMLPTextClassifierPreprocessor` does. `shuffle`/`repeat`/`drop_remainder` default to True for split "train", else
    False (an evaluation pass sees every example once; its last batch may be smaller).
    Sharding by `input_context` is element-level after shuffling.
    """
    _common.check_positive_int("sequence_length", sequence_length)
    examples = labelled_texts(
        source, batch_size, split=split, data_dir=data_dir, seed=seed, shuffle=shuffle,
        repeat=repeat, input_context=input_context, text_column=text_column,
        label_column=label_column, label_names=label_names, drop_remainder=drop_remainder,
        shuffle_buffer_size=shuffle_buffer_size)

    def _tokenize(texts, labels):
        ids, padding_mask = tokenize_to_length(tokenizer, texts, sequence_length)
        return {"token_ids": ids, "padding_mask": padding_mask}, labels

    dataset = examples.map(_tokenize, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.prefetch(AUTOTUNE).with_options(_common.deterministic_options())


def labelled_texts(source, batch_size, split="train", data_dir=None, seed=0, shuffle=None,
                   repeat=None, input_context=None, *, text_column=None, label_column=None,
                   label_names=None, drop_remainder=None, shuffle_buffer_size=10_000):
    """Batches `(texts, labels)` (strings, int32) of a classification source, untokenized.

    The stream `classification_dataset` tokenizes, with the same arguments and defaults; a
    `GMLPTextClassifierPreprocessor` mapped over it gives `classification_dataset`'s batches
    (the fine-tuning trainer does that). Texts are not yet cleaned (`tokenize_to_length`
    cleans them).
    """
    _common.check_positive_int("batch_size", batch_size)
    _common.check_seed(seed)
    _common.check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    training = split == "train"
    shuffle = training if shuffle is None else shuffle
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    info = classification_info(source, split, data_dir, text_column=text_column, label_column=label_column,
                               label_names=label_names)
    kind, rest = _common.split_source(source)
    if kind == "files":
        examples = _file_examples(info, source)
    else:
        _, raw = _tfds.load(rest, split, data_dir, source)
        text_key, label_key = info["text_column"], info["label_column"]
        examples = raw.map(lambda e: (e[text_key], tf.cast(e[label_key], tf.int32)),
                           num_parallel_calls=AUTOTUNE, deterministic=True)
    _common.require_elements(examples, 1, source, "examples")

    if shuffle:
        examples = examples.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        examples = examples.repeat()
    examples = _common.shard(examples, input_context)
    examples = examples.batch(batch_size, drop_remainder=drop_remainder)
    return examples.with_options(_common.deterministic_options())
