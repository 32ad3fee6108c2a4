"""Converts a timm gMLP checkpoint to a Keras `.keras` file (and optionally a SavedModel).

    python -m keras_gmlp.convert --checkpoint gmlp_s16_224.safetensors \
        --output gmlp_s16_224.keras [--preset gmlp_s16_224] [--num_classes N] \
        [--export_dir DIR [--label_names FILE]]

The architecture is inferred from the tensor shapes unless `--preset` is
given; every checkpoint entry must map onto the model (see
`keras_gmlp.convert.timm_to_keras`). The model takes RGB pixels in [0, 255];
use `keras_gmlp.convert.preprocess_image` for timm's resize and crop.
"""

import argparse
import logging

from keras_gmlp.convert.timm import timm_to_keras


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_gmlp.convert", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="timm state dict: .safetensors, or .pth/.pt/.bin (needs torch).",
    )
    parser.add_argument("--output", required=True, help="Path of the .keras file to write.")
    parser.add_argument(
        "--preset",
        default=None,
        help="keras_gmlp vision preset, e.g. gmlp_s16_224 (default: inferred from the shapes).",
    )
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="Classes of the head (default: rows of head.weight; a mismatch is an error).",
    )
    parser.add_argument(
        "--export_dir",
        default=None,
        help="Also export a serving SavedModel under this base directory (keras_gmlp.export).",
    )
    parser.add_argument(
        "--label_names",
        default=None,
        help="With --export_dir: text file with one class name per line, in class-id order.",
    )
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"--output must end in .keras, got {args.output!r}.")
    if args.label_names and not args.export_dir:
        parser.error("--label_names only applies with --export_dir.")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    label_names = _read_label_names(args.label_names) if args.label_names else None
    model = timm_to_keras(args.checkpoint, preset=args.preset, num_classes=args.num_classes)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(
            f"--label_names {args.label_names!r} has {len(label_names)} names but the "
            f"checkpoint has {model.num_classes} classes."
        )
    model.save(args.output)
    backbone = model.backbone
    print(
        f"Wrote {args.output}: {model.count_params():,} parameters, image_shape="
        f"{backbone.image_shape}, patch_size={backbone.patch_size}, "
        f"num_layers={backbone.num_layers}, hidden_dim={backbone.hidden_dim}, "
        f"ffn_dim={backbone.ffn_dim}, num_classes={model.num_classes}."
    )
    if args.export_dir:
        from keras_gmlp.export import export_model

        path = export_model(model, args.export_dir, label_names=label_names)
        print(f"Exported a SavedModel to {path}.")
    return 0


def _read_label_names(path):
    with open(path, encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]

