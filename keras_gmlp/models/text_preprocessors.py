"""Raw strings -> model inputs for the text tasks, following keras_gmlp.data's pipelines.

Both preprocessors tokenize with `GMLPTokenizer` through
`keras_gmlp.data.text.tokenize_to_length`, the function `keras_gmlp.data.classification_dataset`
uses (clean, truncate/pad to `sequence_length` without [CLS]/[SEP], `padding_mask =
token_ids != [PAD]`); the masked-LM one then masks each sequence with
`keras_gmlp.data.masking.mask_sequence` (BERT's 80/10/10 rule, [PAD]/[CLS]/[SEP] never
selected), as `keras_gmlp.data.mlm_dataset` does. Unlike `mlm_dataset`, which packs all lines
into one token stream and seeds each element's masks statelessly for exact resumption, the
preprocessor works on one batch at a time (keras-hub's `fit` on strings): each text is its own
sequence and masks are drawn afresh on every call.

They run TensorFlow ops (tf.data or eager); keras-hub maps them over `fit`/`predict` inputs on
every backend.
"""

import math

import keras
import keras_hub
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_gmlp import validation
from keras_gmlp.models.text_backbone import GMLPBackbone
from keras_gmlp.models.tokenizer import GMLPTokenizer


def _pack(tokenizer, texts, sequence_length):
    """(token_ids, padding_mask) int32, (batch, sequence_length) or (sequence_length,) for a
    scalar string: `keras_gmlp.data.text.tokenize_to_length`, the pipelines' tokenization."""
    from keras_gmlp.data.text import tokenize_to_length

    return tokenize_to_length(tokenizer, texts, sequence_length)


class _FromBackbonePreset:
    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        # A preset without this preprocessor's own config (e.g. a classifier loaded from a
        # masked-LM preset): take the sequence length of the preset's backbone.
        kwargs.setdefault("sequence_length", loader.config["config"]["sequence_length"])
        return super()._add_missing_kwargs(loader, kwargs)


def check_fits_backbone(preprocessor, backbone):
    """Raises unless the preprocessor's sequences and token ids fit the backbone (tasks call
    it): an id at or past the backbone's vocabulary has no embedding row; TensorFlow on CPU
    raises only once such an id turns up, and JAX silently gives NaN logits and loss."""
    if preprocessor is None:
        return
    if hasattr(preprocessor, "sequence_length"):
        validation.check(preprocessor.sequence_length <= backbone.sequence_length,
                         "preprocessor.sequence_length", preprocessor.sequence_length,
                         f"at most the backbone's sequence_length={backbone.sequence_length}")
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None and tokenizer.vocabulary is not None:
        size = tokenizer.vocabulary_size()
        validation.check(size <= backbone.vocabulary_size,
                         "preprocessor.tokenizer.vocabulary_size()", size,
                         f"at most the backbone's vocabulary_size={backbone.vocabulary_size} "
                         "(larger ids have no embedding)")


def _check_text_input(x):
    if isinstance(x, tuple):
        validation.check(len(x) == 1, "x", f"<tuple of {len(x)} segments>",
                         "one text per example (gMLP has no sentence-pair input)")
        x = x[0]
    return x


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPTextClassifierPreprocessor(_FromBackbonePreset, keras_hub.models.TextClassifierPreprocessor):
    """Strings -> `{"token_ids", "padding_mask"}` for `GMLPTextClassifier` (labels pass through).

    Args:
        tokenizer: a `GMLPTokenizer`.
        sequence_length: tokens per example (at most the backbone's `sequence_length`).
    """

    backbone_cls = GMLPBackbone
    tokenizer_cls = GMLPTokenizer

    def __init__(self, tokenizer, sequence_length=128, **kwargs):
        kwargs.pop("truncate", None)  # keras-hub's pair-truncation option; one segment here
        validation.check(isinstance(tokenizer, GMLPTokenizer), "tokenizer",
                         f"<{type(tokenizer).__name__}>", "a GMLPTokenizer")
        validation.check_positive_int("sequence_length", sequence_length)
        super().__init__(tokenizer=tokenizer, sequence_length=sequence_length, **kwargs)

    def build(self, input_shape):
        # No keras-hub packer: the pipelines' format has no [CLS]/[SEP].
        self.built = True

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        ids, mask = _pack(self.tokenizer, _check_text_input(x), self.sequence_length)
        x = {"token_ids": ids, "padding_mask": mask}
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.pop("truncate", None)
        return config


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPMaskedLMPreprocessor(_FromBackbonePreset, keras_hub.models.MaskedLMPreprocessor):
    """Strings -> `(x, mask_ids, mask_weights)` for `GMLPMaskedLM`, masked on the fly.

    x = `{"token_ids" (masked), "padding_mask", "mask_positions"}`; `mask_weights` is the
    sample weight (0 on padded mask slots). Labels passed in are ignored (the targets are the
    masked tokens).

    Args:
        tokenizer: a `GMLPTokenizer`.
        sequence_length: tokens per example.
        mask_selection_rate: fraction of (selectable) tokens chosen for prediction.
        mask_selection_length: mask slots per sequence; None: ceil(sequence_length *
            mask_selection_rate), which never drops a selection (as `mlm_dataset`).
        mask_token_rate: chosen tokens replaced by [MASK].
        random_token_rate: chosen tokens replaced by a random id (the rest stay).
        seed: optional int, makes the masks reproducible from run to run.
    """

    backbone_cls = GMLPBackbone
    tokenizer_cls = GMLPTokenizer

    def __init__(self, tokenizer, sequence_length=128, mask_selection_rate=0.15,
                 mask_selection_length=None, mask_token_rate=0.8, random_token_rate=0.1,
                 seed=None, **kwargs):
        kwargs.pop("truncate", None)
        validation.check(isinstance(tokenizer, GMLPTokenizer), "tokenizer",
                         f"<{type(tokenizer).__name__}>", "a GMLPTokenizer")
        validation.check_positive_int("sequence_length", sequence_length)
        validation.check(isinstance(mask_selection_rate, (int, float)) and 0 < mask_selection_rate <= 1,
                         "mask_selection_rate", mask_selection_rate, "a float in (0, 1]")
        if mask_selection_length is not None:
            validation.check_positive_int("mask_selection_length", mask_selection_length)
        for name, rate in (("mask_token_rate", mask_token_rate), ("random_token_rate", random_token_rate)):
            validation.check(isinstance(rate, (int, float)) and 0 <= rate <= 1, name, rate, "a float in [0, 1]")
        validation.check(mask_token_rate + random_token_rate <= 1, "mask_token_rate + random_token_rate",
                         mask_token_rate + random_token_rate, "at most 1")
        if seed is not None:
            validation.check_seed("seed", seed)
        super().__init__(tokenizer=tokenizer, sequence_length=sequence_length,
                         mask_selection_rate=mask_selection_rate,
                         mask_selection_length=mask_selection_length,
                         mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                         **kwargs)
        self.seed = seed

    def build(self, input_shape):
        self.built = True

    def _num_slots(self):
        if self.mask_selection_length is not None:
            return self.mask_selection_length
        return math.ceil(self.sequence_length * self.mask_selection_rate)

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        import tensorflow as tf

        from keras_gmlp.data.masking import mask_sequence

        ids, padding_mask = _pack(self.tokenizer, _check_text_input(x), self.sequence_length)
        unbatched = ids.shape.rank == 1
        if unbatched:
            ids, padding_mask = ids[None], padding_mask[None]
        tokenizer = self.tokenizer
        # As mlm_dataset: [PAD], [CLS] and [SEP] (and id 0) are never selected.
        unselectable = sorted({0, tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id})
        slots = self._num_slots()
        seeds = tf.random.uniform([tf.shape(ids)[0], 2], maxval=2**31 - 1, dtype=tf.int32,
                                  seed=self.seed)

        def mask_one(element):
            sequence, length, seed = element
            return mask_sequence(
                sequence, length, seed,
                vocabulary_size=tokenizer.vocabulary_size(),
                mask_token_id=tokenizer.mask_token_id,
                unselectable_ids=unselectable,
                selection_rate=self.mask_selection_rate,
                max_selections=slots,
                mask_token_rate=self.mask_token_rate,
                random_token_rate=self.random_token_rate,
            )

        lengths = tf.reduce_sum(padding_mask, axis=1)
        masked, positions, mask_ids, weights = tf.map_fn(
            mask_one, (ids, lengths, seeds),
            fn_output_signature=(
                tf.TensorSpec([self.sequence_length], tf.int32),
                tf.TensorSpec([slots], tf.int32),
                tf.TensorSpec([slots], tf.int32),
                tf.TensorSpec([slots], tf.float32),
            ),
        )
        if unbatched:
            masked, padding_mask, positions = masked[0], padding_mask[0], positions[0]
            mask_ids, weights = mask_ids[0], weights[0]
        x = {"token_ids": masked, "padding_mask": padding_mask, "mask_positions": positions}
        return keras.utils.pack_x_y_sample_weight(x, mask_ids, weights)

    def get_config(self):
        config = super().get_config()
        config.pop("truncate", None)
        config["seed"] = self.seed
        return config
