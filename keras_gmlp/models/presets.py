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
