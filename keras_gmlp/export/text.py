"""SavedModel exports of the text models: token-id and raw-text signatures.

Raw-text signatures run keras-hub's `WordPieceTokenizer` inside the graph
(tensorflow-text ops), so a SavedModel exported with a tokenizer loads only
where those ops are registered: `import tensorflow_text` in Python, or a
TF Serving build that links TF Text. Export without a tokenizer for
token-id signatures only.
"""

import keras_hub
import tensorflow as tf

from keras_gmlp.data.text import clean_text
from keras_gmlp.export.common import LABELS_FILENAME
from keras_gmlp.export.common import ServingModule
from keras_gmlp.export.common import VOCABULARY_FILENAME
from keras_gmlp.export.common import after
from keras_gmlp.export.common import check_lines
from keras_gmlp.export.common import check_top_k
from keras_gmlp.export.common import classification_outputs
from keras_gmlp.export.common import input_spec
from keras_gmlp.export.common import label_names_for
from keras_gmlp.export.common import model_metadata
from keras_gmlp.export.common import require
from keras_gmlp.export.common import require_range
from keras_gmlp.export.common import require_shape
from keras_gmlp.export.common import save_versioned
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier

TEXT_SIGNATURE = "predict_text"
MASK_TOKEN = "[MASK]"


def _token_id_spec(name):
    return input_spec(tf.int32, name)


def _text_spec():
    return input_spec(tf.string, "text")


def _serving_tokenizer(tokenizer, model, extra_special_tokens=()):
    """A graph-mode copy of `tokenizer` that does not pad, keeping `extra_special_tokens` whole."""
    if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        raise TypeError(
            f"`tokenizer` must be a keras_hub.tokenizers.WordPieceTokenizer (e.g. from "
            f"keras_gmlp.data.text.make_tokenizer), got {type(tokenizer).__name__}."
        )
    vocabulary = check_lines("tokenizer vocabulary", tokenizer.get_vocabulary())
    vocabulary_size = model.backbone.vocabulary_size
    if len(vocabulary) != vocabulary_size:
        raise ValueError(
            f"The tokenizer's vocabulary has {len(vocabulary)} tokens but the model's "
            f"vocabulary_size is {vocabulary_size}; export the tokenizer the model was trained "
            f"with."
        )
    config = tokenizer.get_config()
    special_tokens = list(config.get("special_tokens") or [])
    for token in extra_special_tokens:
        if token not in vocabulary:
            raise ValueError(f"The tokenizer's vocabulary has no {token!r} token.")
        if token not in special_tokens:
            special_tokens.append(token)
    serving = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        sequence_length=None,  # padded to the batch's longest row below, not to a fixed length
        lowercase=tokenizer.lowercase,
        strip_accents=tokenizer.strip_accents,
        split=tokenizer.split,
        split_on_cjk=tokenizer.split_on_cjk,
        suffix_indicator=tokenizer.suffix_indicator,
        oov_token=tokenizer.oov_token,
        special_tokens=special_tokens or None,
        special_tokens_in_strings=bool(special_tokens) and (
            config.get("special_tokens_in_strings") or bool(extra_special_tokens)
        ),
        dtype="int32",
    )
    return serving, vocabulary


class _TextModule(ServingModule):
    def __init__(self, model, tokenizer, metadata, asset_dir, start_token, end_token,
                 extra_special_tokens=()):
        super().__init__(model, metadata, asset_dir)
        self._sequence_length = model.backbone.sequence_length
        self._vocabulary_size = model.backbone.vocabulary_size
        self._has_tokenizer = tokenizer is not None
        if tokenizer is None:
            if start_token is not None or end_token is not None:
                raise ValueError("`start_token`/`end_token` need a `tokenizer`.")
            # No raw-text signature: hide the method so saving does not trace it.
            self.serve_text = None
            return
        serving_tokenizer, vocabulary = _serving_tokenizer(tokenizer, model, extra_special_tokens)
        # A bound method is not tracked: the tokenizer's ops are traced into the graph, and no
        # Keras object enters the SavedModel's object graph.
        self._tokenize = serving_tokenizer.tokenize
        self.vocabulary_file = self.write_asset(VOCABULARY_FILENAME, vocabulary)
        self.vocabulary_table = self.lookup_table(self.vocabulary_file)
        ids = {}
        for name, token in (("start_token", start_token), ("end_token", end_token)):
            if token is not None and token not in vocabulary:
                raise ValueError(f"`{name}`={token!r} is not in the tokenizer's vocabulary.")
            ids[name] = None if token is None else vocabulary.index(token)
        self._start_id, self._end_id = ids["start_token"], ids["end_token"]
        if extra_special_tokens:
            self._special_ids = {token: vocabulary.index(token) for token in extra_special_tokens}

    def check_token_inputs(self, token_ids, padding_mask, mask_positions=None):
        """The token-id signature's inputs, checked in order (ranks, shapes, values) before
        the model runs; each failed check fails the request with a message naming the input,
        its shape or values and what was expected. Returns the inputs, rank 2."""
        n, vocabulary_size = self._sequence_length, self._vocabulary_size
        inputs = [token_ids, padding_mask] + ([] if mask_positions is None else [mask_positions])
        names = ["token_ids", "padding_mask", "mask_positions"]
        inputs = after([
            require_shape(x, name, (None, None), "rank 2, (batch, length) int32")
            for x, name in zip(inputs, names)
        ], *inputs)
        token_ids, padding_mask = inputs[0], inputs[1]
        shape = tf.shape(token_ids, out_type=tf.int64)
        length = shape[1]
        checks = [
            require(
                (length >= 1) & (length <= n),
                f"`token_ids` of shape {{}}: expected (batch, length) with 1 <= length <= "
                f"sequence_length={n}.",
                shape,
            ),
            require(
                tf.reduce_all(tf.equal(tf.shape(padding_mask, out_type=tf.int64), shape)),
                "`padding_mask` of shape {}: expected the shape of `token_ids`, {}.",
                tf.shape(padding_mask, out_type=tf.int64), shape,
            ),
        ]
        if mask_positions is not None:
            mask_shape = tf.shape(inputs[2], out_type=tf.int64)
            checks.append(require(
                tf.equal(mask_shape[0], shape[0]),
                "`mask_positions` of shape {}: expected (batch, masks) with the batch of "
                "`token_ids`, {}.",
                mask_shape, shape,
            ))
        inputs = after(checks, *inputs)
        checks = [
            require_range(inputs[0], "token_ids", 0, vocabulary_size,
                          f"token ids in [0, {vocabulary_size}), the vocabulary size"),
            require_range(inputs[1], "padding_mask", 0, 2, "0 (padding) or 1 (token)"),
        ]
        if mask_positions is not None:
            checks.append(require_range(
                inputs[2], "mask_positions", 0, tf.cast(length, inputs[2].dtype),
                "positions in [0, length of `token_ids`)",
            ))
        inputs = after(checks, *inputs)
        return [tf.ensure_shape(x, [None, None]) for x in inputs]

    def check_text(self, text):
        """`text` checked to be `(batch,)` strings, and cleaned as the training pipelines do."""
        text = after([require_shape(text, "text", (None,), "(batch,) strings")], text)
        return clean_text(tf.ensure_shape(text, [None]))

    def tokenize(self, text):
        """`(batch,)` strings -> `(token_ids, padding_mask)`, `(batch, width)` int32.

        Rows are truncated to the model's `sequence_length` (start and end
        tokens included) and padded with id 0 to the batch's longest row, at
        least 1, so a batch of empty strings still has a defined output.
        """
        tokens = self._tokenize(text)
        budget = self._sequence_length - (self._start_id is not None) - (self._end_id is not None)
        tokens = tokens[:, :budget]
        batch = tokens.nrows()
        pieces = []
        if self._start_id is not None:
            pieces.append(tf.fill([batch, 1], self._start_id))
        pieces.append(tokens)
        if self._end_id is not None:
            pieces.append(tf.fill([batch, 1], self._end_id))
        if len(pieces) > 1:
            tokens = tf.concat(pieces, axis=1)
        width = tf.maximum(tokens.bounding_shape(axis=1, out_type=tf.int32), 1)
        token_ids = tokens.to_tensor(
            default_value=0, shape=tf.stack([batch, tf.cast(width, tf.int64)])
        )
        padding_mask = tf.sequence_mask(tokens.row_lengths(), width, dtype=tf.int32)
        return token_ids, padding_mask


class _MaskedLMModule(_TextModule):
    def __init__(self, model, tokenizer, top_k, max_masks, metadata, asset_dir, start_token,
                 end_token):
        super().__init__(model, tokenizer, metadata, asset_dir, start_token, end_token,
                         extra_special_tokens=(MASK_TOKEN,) if tokenizer is not None else ())
        self._top_k = min(top_k, model.backbone.vocabulary_size)
        self._max_masks = max_masks

    def _top_k_predictions(self, logits):
        scores, ids = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=self._top_k)
        return {"logits": logits, "top_k_ids": ids, "top_k_scores": scores}

    @tf.function(input_signature=[
        _token_id_spec("token_ids"),
        _token_id_spec("padding_mask"),
        _token_id_spec("mask_positions"),
    ])
    def serve_token_ids(self, token_ids, padding_mask, mask_positions):
        token_ids, padding_mask, mask_positions = self.check_token_inputs(
            token_ids, padding_mask, mask_positions
        )
        logits = self.call_model({
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "mask_positions": mask_positions,
        })
        outputs = self._top_k_predictions(logits)
        if self._has_tokenizer:
            outputs["top_k_tokens"] = self.vocabulary_table.lookup(
                tf.cast(outputs["top_k_ids"], tf.int64)
            )
        return outputs

    @tf.function(input_signature=[_text_spec()])
    def serve_text(self, text):
        token_ids, padding_mask = self.tokenize(self.check_text(text))
        mask_id = self._special_ids[MASK_TOKEN]
        is_mask = tf.equal(token_ids, mask_id) & tf.cast(padding_mask, tf.bool)
        where = tf.where(is_mask)  # row-major: each row's masks in reading order
        positions = tf.RaggedTensor.from_value_rowids(
            tf.cast(where[:, 1], tf.int32), where[:, 0], nrows=tf.shape(token_ids, tf.int64)[0]
        )
        num_masks = tf.cast(positions.row_lengths(), tf.int32)
        mask_positions = positions[:, : self._max_masks].to_tensor(
            default_value=0, shape=[None, self._max_masks]
        )
        mask_valid = tf.sequence_mask(num_masks, self._max_masks)
        logits = self.call_model({
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "mask_positions": mask_positions,
        })
        outputs = self._top_k_predictions(logits)
        valid = mask_valid[:, :, None]
        top_k_ids = tf.where(valid, outputs["top_k_ids"], -1)
        return {
            "top_k_ids": top_k_ids,
            "top_k_scores": tf.where(valid, outputs["top_k_scores"], 0.0),
            "top_k_tokens": tf.where(
                valid, self.vocabulary_table.lookup(tf.cast(outputs["top_k_ids"], tf.int64)), ""
            ),
            "mask_positions": tf.where(mask_valid, mask_positions, -1),
            "mask_valid": mask_valid,
            "num_masks": num_masks,
            "token_ids": token_ids,
        }


class _TextClassifierModule(_TextModule):
    def __init__(self, model, tokenizer, label_names, top_k, metadata, asset_dir, start_token,
                 end_token):
        super().__init__(model, tokenizer, metadata, asset_dir, start_token, end_token)
        self._top_k = min(top_k, model.num_classes)
        self.labels_file = self.write_asset(
            LABELS_FILENAME, label_names_for(model.num_classes, label_names)
        )
        self.labels_table = self.lookup_table(self.labels_file)

    @tf.function(input_signature=[_token_id_spec("token_ids"), _token_id_spec("padding_mask")])
    def serve_token_ids(self, token_ids, padding_mask):
        token_ids, padding_mask = self.check_token_inputs(token_ids, padding_mask)
        logits = self.call_model({"token_ids": token_ids, "padding_mask": padding_mask})
        return classification_outputs(logits, self._top_k, self.labels_table)

    @tf.function(input_signature=[_text_spec()])
    def serve_text(self, text):
        token_ids, padding_mask = self.tokenize(self.check_text(text))
        logits = self.call_model({"token_ids": token_ids, "padding_mask": padding_mask})
        outputs = classification_outputs(logits, self._top_k, self.labels_table)
        outputs["token_ids"] = token_ids
        return outputs


def _tokenizer_for(model, tokenizer):
    """`tokenizer`, else the tokenizer of the model's keras-hub preprocessor (None if neither).

    A model loaded from a preset (or built with `preprocessor=`) carries the tokenizer it was
    trained with; exporting it gives `predict_text` the same tokenization as `model.predict`.
    """
    own = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        return own
    if own is not None and list(own.get_vocabulary()) != list(tokenizer.get_vocabulary()):
        raise ValueError(
            f"`tokenizer` has a vocabulary of {tokenizer.vocabulary_size()} tokens that differs "
            f"from the one of the model's preprocessor ({own.vocabulary_size()} tokens): expected "
            "the tokenizer the model was trained with (or no `tokenizer`, to use the "
            "preprocessor's).")
    return tokenizer


def _signatures(module, has_text):
    signatures = {"serving_default": module.serve_token_ids}
    if has_text:
        signatures[TEXT_SIGNATURE] = module.serve_text
    return signatures


def export_masked_lm(model, export_base, *, tokenizer=None, top_k=5, version=None, max_masks=8,
                     start_token=None, end_token=None):
    """Exports a `GMLPMaskedLM` as a TF Serving SavedModel under `export_base/<version>/`.

    Signatures:
        serving_default: `token_ids`, `padding_mask`, `mask_positions`, each
            `(batch, length)` int32 (length <= the model's `sequence_length`)
            -> `logits` `(batch, masks, vocab)` float32, `top_k_ids` int32 and
            `top_k_scores` float32 `(batch, masks, k)` (softmax
            probabilities), and `top_k_tokens` string when a tokenizer is given.
        predict_text (only with a tokenizer): `text` `(batch,)` strings with
            "[MASK]" (case-sensitive) where tokens are to be predicted ->
            per [MASK], padded to `max_masks` slots: `top_k_tokens` string,
            `top_k_ids` int32, `top_k_scores` float32 `(batch, max_masks, k)`;
            `mask_positions` int32 `(batch, max_masks)` (index into `token_ids`);
            `mask_valid` bool `(batch, max_masks)`, False for unused slots,
            whose ids/positions are -1, scores 0 and tokens "";
            `num_masks` int32 `(batch,)` the number of [MASK] tokens kept
            after truncation (only the first `max_masks` are predicted);
            `token_ids` int32 `(batch, width)` the tokenized input.
        Token-id inputs are checked before the model runs (see
        `export_text_classifier`); `mask_positions` must have the batch of
        `token_ids` and values in [0, length).

    Args:
        model: a `GMLPMaskedLM`.
        export_base: directory of versions, TF Serving's `--model_base_path`.
        tokenizer: optional `keras_hub.tokenizers.WordPieceTokenizer` the
            model was trained with; adds `predict_text` and the vocabulary asset.
            Default: the tokenizer of the model's `preprocessor`, if it has one.
        top_k: int, number of candidates per mask (clipped to the vocabulary size).
        version: int, or None for one more than the largest existing version.
        max_masks: int, [MASK] slots per string in `predict_text`.
        start_token, end_token: optional tokens (e.g. "[CLS]", "[SEP]")
            wrapped around each string, if the training data had them.

    Returns:
        The path of the written SavedModel directory, `export_base/<version>`.
    """
    if not isinstance(model, GMLPMaskedLM):
        raise TypeError(f"`model` must be a GMLPMaskedLM, got {type(model).__name__}.")
    tokenizer = _tokenizer_for(model, tokenizer)
    top_k = check_top_k(top_k)
    if not isinstance(max_masks, int) or max_masks < 1:
        raise ValueError(f"`max_masks` must be a positive int, got {max_masks!r}.")
    metadata = model_metadata(
        model, top_k=top_k, max_masks=max_masks, start_token=start_token, end_token=end_token
    )

    def make_module(asset_dir):
        module = _MaskedLMModule(model, tokenizer, top_k, max_masks, metadata, asset_dir,
                                 start_token, end_token)
        return module, _signatures(module, tokenizer is not None)

    return save_versioned(make_module, export_base, version)


def export_text_classifier(model, export_base, *, tokenizer=None, label_names=None, top_k=5,
                           version=None, start_token=None, end_token=None):
    """Exports a `GMLPTextClassifier` as a TF Serving SavedModel under `export_base/<version>/`.

    Signatures (outputs identical for both):
        serving_default: `token_ids`, `padding_mask` `(batch, length)` int32,
            length <= the model's `sequence_length`.
        predict_text (only with a tokenizer): `text` `(batch,)` strings,
            truncated to `sequence_length` tokens; an empty string is a row
            with no real token (pooled to zeros); also outputs `token_ids`.
        Outputs: `logits`, `probabilities` `(batch, classes)` float32;
            `predicted_id` int32 and `predicted_label` string `(batch,)`;
            `top_k_ids` int32, `top_k_scores` float32, `top_k_labels` string
            `(batch, k)`, k = min(top_k, classes).
        Inputs are declared by dtype only and checked before the model runs:
        `token_ids` rank 2 with 1 <= length <= `sequence_length` and ids in
        [0, vocabulary_size), `padding_mask` of the same shape with values 0
        or 1, `text` a vector. A failed check fails the request with
        InvalidArgumentError naming the input, its shape or value range and
        what was expected. Raw text is cleaned as keras_gmlp.data's
        pipelines clean it (`keras_gmlp.data.text.clean_text`: invalid UTF-8
        replaced, NUL bytes as spaces, whitespace stripped) before tokenizing.

    Args:
        model: a `GMLPTextClassifier`.
        export_base: directory of versions, TF Serving's `--model_base_path`.
        tokenizer: optional `keras_hub.tokenizers.WordPieceTokenizer`; adds
            `predict_text` and the vocabulary asset. Default: the tokenizer of the
            model's `preprocessor` (`GMLPTextClassifierPreprocessor`), if it has one.
        label_names: optional class names (default "0", "1", ...), stored as an asset.
        top_k: int, number of classes in the top-k outputs.
        version: int, or None for one more than the largest existing version.
        start_token, end_token: optional tokens wrapped around each string.

    Returns:
        The path of the written SavedModel directory, `export_base/<version>`.
    """
    if not isinstance(model, GMLPTextClassifier):
        raise TypeError(f"`model` must be a GMLPTextClassifier, got {type(model).__name__}.")
    tokenizer = _tokenizer_for(model, tokenizer)
    top_k = check_top_k(top_k)
    label_names = label_names_for(model.num_classes, label_names)
    metadata = model_metadata(
        model, top_k=top_k, label_names=label_names, start_token=start_token, end_token=end_token
    )

    def make_module(asset_dir):
        module = _TextClassifierModule(model, tokenizer, label_names, top_k, metadata, asset_dir,
                                       start_token, end_token)
        return module, _signatures(module, tokenizer is not None)

    return save_versioned(make_module, export_base, version)
