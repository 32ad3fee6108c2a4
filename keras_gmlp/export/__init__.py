"""TF Serving exports of keras_gmlp models: versioned SavedModels with documented signatures.

`export_model(model, export_base, ...)` writes `export_base/<version>/`, the
layout TF Serving's `--model_base_path` expects, dispatching on the model
type. Loading an export needs only TensorFlow (plus `import tensorflow_text`
for exports made with a tokenizer). See each exporter for its signatures.
"""

from keras_gmlp.export.image import BYTES_SIGNATURE
from keras_gmlp.export.image import export_image_classifier
from keras_gmlp.export.keras_file import read_keras_metadata
from keras_gmlp.export.keras_file import save_keras
from keras_gmlp.export.text import TEXT_SIGNATURE
from keras_gmlp.export.text import export_masked_lm
from keras_gmlp.export.text import export_text_classifier
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier


def export_model(model, export_base, *, tokenizer=None, label_names=None, top_k=5, version=None,
                 **kwargs):
    """Exports a keras_gmlp task model for TF Serving; returns `export_base/<version>`.

    Dispatches to `export_masked_lm`, `export_text_classifier` or
    `export_image_classifier`; extra keyword arguments go to that function.

    Args:
        model: a `GMLPMaskedLM`, `GMLPTextClassifier` or `GMLPImageClassifier`.
        export_base: directory holding integer version subdirectories, local or
            on any TensorFlow file system ("gs://bucket/exports"): every path
            goes through `tf.io.gfile`.
        tokenizer: the text models' `keras_hub.tokenizers.WordPieceTokenizer`;
            adds the raw-text signature `predict_text`.
        label_names: the classifiers' class names (stored as an asset).
        top_k: int, candidates in the top-k outputs.
        version: int, or None for one more than the largest existing version
            (an exporter whose version another one took meanwhile takes the next).
    """
    if isinstance(model, GMLPMaskedLM):
        if label_names is not None:
            raise ValueError("`label_names` does not apply to a GMLPMaskedLM.")
        return export_masked_lm(
            model, export_base, tokenizer=tokenizer, top_k=top_k, version=version, **kwargs
        )
    if isinstance(model, GMLPTextClassifier):
        return export_text_classifier(
            model, export_base, tokenizer=tokenizer, label_names=label_names, top_k=top_k,
            version=version, **kwargs,
        )
    if isinstance(model, GMLPImageClassifier):
        if tokenizer is not None:
            raise ValueError("`tokenizer` does not apply to a GMLPImageClassifier.")
        return export_image_classifier(
            model, export_base, label_names=label_names, top_k=top_k, version=version, **kwargs
        )
    raise TypeError(
        "`model` must be a GMLPMaskedLM, GMLPTextClassifier or GMLPImageClassifier, got "
        f"{type(model).__name__}."
    )


__all__ = [
    "BYTES_SIGNATURE",
    "TEXT_SIGNATURE",
    "export_image_classifier",
    "export_masked_lm",
    "export_model",
    "export_text_classifier",
    "read_keras_metadata",
    "save_keras",
]
