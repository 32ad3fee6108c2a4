"""--export_dir: keras_gmlp.export when available, else Keras' default serving signature."""

import os
import time

from absl import logging


def export(model, export_base, **kwargs):
    """Writes a SavedModel under `export_base/<version>/` and returns its path.

    Uses `keras_gmlp.export.export_model` (named signatures, tokenizer and labels inside);
    if that package is absent or not implemented, falls back to `model.export`, whose
    `serve` signature takes the model's inputs and returns its logits.
    """
    try:
        from keras_gmlp.export import export_model
    except ImportError:
        export_model = None
    if export_model is not None:
        try:
            return export_model(model, export_base, **kwargs)
        except NotImplementedError:
            pass
    path = os.path.join(export_base, str(int(time.time())))
    logging.warning("keras_gmlp.export.export_model is unavailable; writing Keras' default "
                    "serving signature to %s.", path)
    model.export(path)
    return path
