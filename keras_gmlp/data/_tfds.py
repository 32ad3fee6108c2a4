"""Offline TFDS access: read a dataset prepared in `data_dir`, never download."""

from absl import logging


def load(name, split, data_dir, source, shuffle_seed=None):
    """(builder, dataset of feature dicts) for "tfds:NAME[/CONFIG]", read from `data_dir` only.

    With `shuffle_seed`, the dataset's files are read in a seeded order, reshuffled each epoch.
    """
    import tensorflow_datasets as tfds  # slow import; only TFDS sources need it

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError, bad config names, ...
        raise ValueError(f"`source`={source!r}: TFDS cannot build {name!r}: {error}") from error
    try:
        read_config = None
        if shuffle_seed is not None:
            read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=True)
        dataset = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                     read_config=read_config)
    except Exception as error:  # not prepared: AssertionError; unknown split: ValueError/KeyError
        raise ValueError(
            f"`source`={source!r}, `split`={split!r}, `data_dir`={data_dir!r}: the dataset could not be "
            f"read offline ({error}). Prepare it first where the data is available, e.g. "
            f"`tfds build {name} --data_dir=DIR` (or download_and_prepare with manual_dir), then pass "
            f"that DIR as data_dir."
        ) from error
    logging.info("reading %s split %r from TFDS data_dir %r", name, split, data_dir)
    return builder, dataset


def feature_key(builder, kind, wanted, source, argument):
    """The feature of `kind` ("text" | "label" | "image") to read, honouring an explicit `wanted`."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    if wanted is not None:
        if wanted not in features:
            raise ValueError(
                f"`{argument}`={wanted!r}: not a feature of {source!r}; features are {sorted(features.keys())}."
            )
        return wanted
    classes = {
        "text": tfds.features.Text,
        "label": tfds.features.ClassLabel,
        "image": tfds.features.Image,
    }[kind]
    preferred = {"text": ("text", "sentence", "content"), "label": ("label",), "image": ("image",)}[kind]
    for key in preferred:
        if key in features and isinstance(features[key], classes):
            return key
    for key in sorted(features.keys()):
        if isinstance(features[key], classes):
            return key
    raise ValueError(
        f"`source`={source!r} has no {kind} feature (features: {sorted(features.keys())}); "
        f"pass `{argument}` to name one."
    )
