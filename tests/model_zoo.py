"""Small instances of every keras_gmlp model with matching toy batches, shared by tests."""

import numpy as np

from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPVisionBackbone

VOCAB, N = 32, 8
MODEL_TYPES = ["text_backbone", "masked_lm", "text_classifier", "vision_backbone", "image_classifier"]


def text_backbone(dtype=None, **kwargs):
    config = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, ffn_dim=32, sequence_length=N,
                  tiny_attention_dim=8)
    return GMLPBackbone(**{**config, **kwargs}, dtype=dtype)


def vision_backbone(dtype=None):
    return GMLPVisionBackbone(
        image_shape=(8, 8, 1), patch_size=2, num_layers=2, hidden_dim=16, ffn_dim=32, dtype=dtype
    )


def build(model_type, dtype=None):
    return {
        "text_backbone": lambda: text_backbone(dtype),
        "masked_lm": lambda: GMLPMaskedLM(text_backbone(dtype)),
        "text_classifier": lambda: GMLPTextClassifier(text_backbone(dtype), num_classes=2),
        "vision_backbone": lambda: vision_backbone(dtype),
        "image_classifier": lambda: GMLPImageClassifier(vision_backbone(dtype), num_classes=3),
    }[model_type]()


def inputs(model_type, rng, batch=4):
    if model_type.startswith(("vision", "image")):
        return rng.uniform(0, 255, size=(batch, 8, 8, 1)).astype("float32")
    lengths = rng.integers(3, N + 1, size=batch)
    mask = (np.arange(N)[None] < lengths[:, None]).astype("int32")
    x = {"token_ids": rng.integers(1, VOCAB, size=(batch, N)).astype("int32") * mask, "padding_mask": mask}
    if model_type == "masked_lm":
        x["mask_positions"] = np.stack([rng.choice(int(l), 2, replace=False) for l in lengths]).astype("int32")
    return x
