"""--export_dir: the trainers' SavedModel export through `keras_gmlp.export.export_model`."""

from keras_gmlp.export import export_model


def export(model, export_base, **kwargs):
    """Writes a SavedModel under `export_base/<version>/` and returns its path.

    `keras_gmlp.export.export_model` gives named signatures with the tokenizer and label
    names inside; `kwargs` (tokenizer, label_names, top_k) go to it.
    """
    return export_model(model, export_base, **kwargs)
