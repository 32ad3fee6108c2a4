"""keras_gmlp models: text and vision backbones and their task heads."""

from keras_gmlp.models.image_classifier import GMLPImageClassifier
from keras_gmlp.models.masked_lm import GMLPMaskedLM
from keras_gmlp.models.presets import TEXT_PRESETS
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.text_backbone import GMLPBackbone
from keras_gmlp.models.text_classifier import GMLPTextClassifier
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone

__all__ = [
    "GMLPBackbone",
    "GMLPImageClassifier",
    "GMLPMaskedLM",
    "GMLPTextClassifier",
    "GMLPVisionBackbone",
    "TEXT_PRESETS",
    "VISION_PRESETS",
]
