"""How far `model.quantize(mode)` moves a model's outputs: keras_gmlp's masked LM and image
classifier beside keras-hub's BERT masked LM and ViT image classifier of matching size.

Protocol (the same for every model): build the model from a seed with its own default
initialisers (random weights, what a user quantizing a fresh model gets; no training), run the
same seeded inputs through it in float32, quantize a fresh copy built from the same seed with
`model.quantize(mode)` (every Dense/EinsumDense layer Keras can quantize, the task heads
included), run the inputs again, and report max |quantized - float| / max |float| over all
logits. Each cell is the median over seeds, with the range in brackets.

    python -m benchmarks.quantization_error            # markdown table on stdout
    python -m benchmarks.quantization_error --seeds 5 --modes int8,int4,float8
"""

import argparse
import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Sizes: hidden width and parameter count match within each pair (gMLP takes twice the layers,
# as in the paper's comparisons, because a gMLP block has about half a Transformer layer's
# parameters).
VOCABULARY_SIZE = 1000
SEQUENCE_LENGTH = 64
MASKED = 10
GMLP_TEXT = dict(vocabulary_size=VOCABULARY_SIZE, num_layers=4, hidden_dim=128, ffn_dim=512,
                 sequence_length=SEQUENCE_LENGTH)
BERT = dict(vocabulary_size=VOCABULARY_SIZE, num_layers=2, num_heads=2, hidden_dim=128,
            intermediate_dim=512, max_sequence_length=SEQUENCE_LENGTH, dropout=0.0)
IMAGE_SHAPE = (16, 16, 3)
GMLP_VISION = dict(image_shape=IMAGE_SHAPE, patch_size=4, num_layers=4, hidden_dim=128,
                   ffn_dim=512)
VIT = dict(image_shape=IMAGE_SHAPE, patch_size=4, num_layers=2, num_heads=2, hidden_dim=128,
           mlp_dim=512)
NUM_CLASSES = 10
BATCH = 8


def _text_inputs(seed, bert):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCABULARY_SIZE, (BATCH, SEQUENCE_LENGTH)).astype("int32")
    mask = np.ones_like(ids)
    positions = np.sort(rng.permuted(np.tile(np.arange(SEQUENCE_LENGTH), (BATCH, 1)), axis=1)
                        [:, :MASKED], axis=1).astype("int32")
    inputs = {"token_ids": ids, "padding_mask": mask, "mask_positions": positions}
    if bert:
        inputs["segment_ids"] = np.zeros_like(ids)
    return inputs


def _images(seed):
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 255, (BATCH,) + IMAGE_SHAPE).astype("float32")


def _models():
    """{name: (factory(), inputs(seed), parameter count of one instance)}."""
    import keras_hub

    from keras_gmlp.models import GMLPBackbone
    from keras_gmlp.models import GMLPImageClassifier
    from keras_gmlp.models import GMLPMaskedLM
    from keras_gmlp.models import GMLPVisionBackbone

    def bert_mlm():
        return keras_hub.models.BertMaskedLM(keras_hub.models.BertBackbone(**BERT))

    def vit():
        # keras-hub's ViT scales inputs itself only through its preprocessor; the images here
        # are rescaled to [-1, 1] as gMLP's backbone does, so both see the same numbers.
        return keras_hub.models.ViTImageClassifier(keras_hub.models.ViTBackbone(**VIT), NUM_CLASSES)

    def scaled_images(seed):
        return _images(seed) / 127.5 - 1.0

    return {
        "gMLP masked LM": (lambda: GMLPMaskedLM(GMLPBackbone(**GMLP_TEXT)),
                           lambda seed: _text_inputs(seed, bert=False)),
        "keras-hub BERT masked LM": (bert_mlm, lambda seed: _text_inputs(seed, bert=True)),
        "gMLP image classifier": (
            lambda: GMLPImageClassifier(GMLPVisionBackbone(**GMLP_VISION), NUM_CLASSES), _images),
        "keras-hub ViT image classifier": (vit, scaled_images),
    }


def relative_error(make, inputs, mode, seed):
    """max |quantized - float| / max |float| of one model built from `seed`."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    model = make()
    reference = keras.ops.convert_to_numpy(model(inputs, training=False))
    keras.utils.set_random_seed(seed)
    quantized = make()
    quantized.quantize(mode)
    got = keras.ops.convert_to_numpy(quantized(inputs, training=False))
    return float(np.max(np.abs(got - reference)) / np.max(np.abs(reference))), model.count_params()


def measure(seeds, modes):
    """[(model name, parameters, {mode: [error per seed]})]."""
    rows = []
    for name, (make, inputs) in _models().items():
        errors, params = {}, None
        for mode in modes:
            errors[mode] = []
            for seed in seeds:
                error, params = relative_error(make, inputs(seed), mode, seed)
                errors[mode].append(error)
        rows.append((name, params, errors))
    return rows


def markdown(rows, modes):
    import numpy as np

    lines = ["| model | parameters | " + " | ".join(modes) + " |",
             "|---|---:|" + "---:|" * len(modes)]
    for name, params, errors in rows:
        cells = []
        for mode in modes:
            values = np.array(errors[mode]) * 100
            cells.append(f"{np.median(values):.2f}% ({values.min():.2f}-{values.max():.2f})")
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (weights and inputs)")
    parser.add_argument("--modes", default="int8,int4,float8", help="comma-separated modes")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    warnings.filterwarnings("ignore", message=".*does not have a `quantize` method.*")
    warnings.filterwarnings("ignore", message="Invalid quantization mode.*")
    print(markdown(measure(range(args.seeds), modes), modes))


if __name__ == "__main__":
    main()
