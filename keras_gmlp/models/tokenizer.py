"""`GMLPTokenizer`: the project's WordPiece tokenizer as a keras-hub tokenizer (presets, assets)."""

import keras
import keras_hub

from keras_gmlp.models.text_backbone import GMLPBackbone


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPTokenizer(keras_hub.tokenizers.WordPieceTokenizer):
    """WordPiece with keras_gmlp's reserved tokens `[PAD]`=0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`.

    It tokenizes exactly as `keras_gmlp.data.make_tokenizer(vocabulary, lowercase=...)` (the
    trainers' pipelines), and names the reserved tokens for keras-hub (`pad_token_id`,
    `mask_token_id`, ...). Texts are never wrapped in `[CLS]`/`[SEP]`: gMLP's pretraining has
    no sentence-pair task, and the preprocessors follow the pipelines.

    Args:
        vocabulary: list of tokens or a vocab.txt path, with the reserved tokens (as
            `keras_gmlp.data.learn_vocabulary` returns; see `from_corpus`).
        lowercase: must match the vocabulary's (`learn_vocabulary`'s default: True).
        **kwargs: `keras_hub.tokenizers.WordPieceTokenizer` arguments.

    Example:
    ```python
    tokenizer = GMLPTokenizer.from_corpus(["some text", "more text"], vocabulary_size=64)
    tokenizer.save_to_preset("my_preset")  # tokenizer.json + assets/tokenizer/vocabulary.txt
    ```
    """

    backbone_cls = GMLPBackbone

    def __init__(self, vocabulary=None, lowercase=True, **kwargs):
        from keras_gmlp.data.text import RESERVED_TOKENS

        pad, _, cls_token, sep, mask = RESERVED_TOKENS
        self._add_special_token(pad, "pad_token")
        self._add_special_token(cls_token, "cls_token")
        self._add_special_token(sep, "sep_token")
        self._add_special_token(mask, "mask_token")
        kwargs.setdefault("oov_token", RESERVED_TOKENS[1])
        # As make_tokenizer: reserved tokens are never split (only used when
        # special_tokens_in_strings=True).
        kwargs.setdefault("special_tokens", list(RESERVED_TOKENS))
        super().__init__(vocabulary=vocabulary, lowercase=lowercase, **kwargs)

    def set_vocabulary(self, vocabulary):
        super().set_vocabulary(vocabulary)
        if vocabulary is not None and self.pad_token_id != 0:
            # Padding masks (`ids != 0`) and the masked-LM head's padded slots rely on it.
            raise ValueError(f"`vocabulary`: expected [PAD] at id 0, found it at {self.pad_token_id}.")

    @classmethod
    def from_corpus(cls, lines, vocabulary_size, lowercase=True, max_lines=None):
        """Learns a vocabulary with `keras_gmlp.data.learn_vocabulary` and wraps it.

        Args:
            lines: a list of strings or a `tf.data.Dataset` of scalar strings
                (`keras_gmlp.data.text_lines(...)`).
            vocabulary_size: tokens, including the reserved ones.
        """
        import tensorflow as tf

        from keras_gmlp import data

        if not isinstance(lines, tf.data.Dataset):
            lines = tf.data.Dataset.from_tensor_slices(list(lines))
        vocabulary = data.learn_vocabulary(lines, vocabulary_size, lowercase=lowercase,
                                           max_lines=max_lines)
        return cls(vocabulary=vocabulary, lowercase=lowercase)
