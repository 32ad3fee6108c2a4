"""Named configurations: the paper's model sizes, plus small ones for demos and tests.

Text sizes follow the paper's Table 4/5 (sequence length 128, BERT's 30522
WordPiece vocabulary); vision sizes follow Table 1 and timm's `gmlp_*16_224`.
"""

TEXT_PRESETS = {
    "gmlp_tiny": dict(
        num_layers=4, hidden_dim=128, ffn_dim=512, sequence_length=128, vocabulary_size=30522
    ),
    "gmlp_base": dict(
        num_layers=48, hidden_dim=512, ffn_dim=3072, sequence_length=128, vocabulary_size=30522
    ),
    "amlp_base": dict(
        num_layers=36,
        hidden_dim=512,
        ffn_dim=3072,
        sequence_length=128,
        vocabulary_size=30522,
        tiny_attention_dim=64,
    ),
    "gmlp_large": dict(
        num_layers=96, hidden_dim=768, ffn_dim=3072, sequence_length=128, vocabulary_size=30522
    ),
    "amlp_large": dict(
        num_layers=72,
        hidden_dim=768,
        ffn_dim=3072,
        sequence_length=128,
        vocabulary_size=30522,
        tiny_attention_dim=128,
    ),
    "gmlp_xlarge": dict(
        num_layers=144, hidden_dim=1024, ffn_dim=4096, sequence_length=128, vocabulary_size=30522
    ),
}

# drop_path_rate = 1 - the paper's survival probability, decayed linearly over depth.
VISION_PRESETS = {
    "gmlp_tiny4_32": dict(
        image_shape=(32, 32, 3), patch_size=4, num_layers=6, hidden_dim=64, ffn_dim=384
    ),
    "gmlp_ti16_224": dict(
        image_shape=(224, 224, 3), patch_size=16, num_layers=30, hidden_dim=128, ffn_dim=768,
        drop_path_rate=0.0,
    ),
    "gmlp_s16_224": dict(
        image_shape=(224, 224, 3), patch_size=16, num_layers=30, hidden_dim=256, ffn_dim=1536,
        drop_path_rate=0.05,
    ),
    "gmlp_b16_224": dict(
        image_shape=(224, 224, 3), patch_size=16, num_layers=30, hidden_dim=512, ffn_dim=3072,
        drop_path_rate=0.2,
    ),
}


def get_preset(name, presets):
    """Returns a copy of preset `name` from `presets`, or raises a ValueError listing the names."""
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {sorted(presets)}.")
    return dict(presets[name])


def parameter_count(config):
    """Parameters of a backbone built from `config` (a named configuration's arguments), without
    building it: token embedding or patch stem, the gMLP blocks (aMLP's tiny attention with
    `tiny_attention_dim`), the final LayerNorm."""
    d, ffn, half = config["hidden_dim"], config["ffn_dim"], config["ffn_dim"] // 2
    if "image_shape" in config:
        height, width, channels = config["image_shape"]
        patch = config["patch_size"]
        n = (height // patch) * (width // patch)
        stem = patch * patch * channels * d + d
    else:
        n = config["sequence_length"]
        stem = config["vocabulary_size"] * d
    block = (2 * d                      # LayerNorm
             + d * ffn + ffn            # the u and v projections
             + 2 * half + n * n + n     # the SGU's LayerNorm, spatial kernel and bias
             + half * d + d)            # the output projection
    attention = config.get("tiny_attention_dim")
    if attention:
        block += d * 3 * attention + 3 * attention + attention * half + half
    return stem + config["num_layers"] * block + 2 * d


def describe(name, config):
    """A one-line description of named configuration `name` (keras-hub's preset metadata)."""
    if "image_shape" in config:
        height, width, _ = config["image_shape"]
        kind = (f"gMLP image encoder, {height}x{width} images in {config['patch_size']}x"
                f"{config['patch_size']} patches")
    else:
        kind = (f"{'aMLP' if config.get('tiny_attention_dim') else 'gMLP'} text encoder, "
                f"{config['sequence_length']} tokens, vocabulary {config['vocabulary_size']}")
    return (f"{kind}, {config['num_layers']} blocks, d_model {config['hidden_dim']}, "
            f"d_ffn {config['ffn_dim']}. A configuration only: from_preset('{name}') builds it "
            "with random weights.")


def preset_entries(presets):
    """`presets` in keras-hub's `Backbone.presets` format ({name: {"metadata": ...}}), plus
    each configuration's constructor arguments under "config"."""
    return {
        name: {
            "metadata": {"description": describe(name, config), "params": parameter_count(config),
                         "path": "gmlp"},
            "config": dict(config),
        }
        for name, config in presets.items()
    }
