"""keras_gmlp models: keras-hub backbones, tasks, tokenizer and preprocessors for gMLP / aMLP."""

from keras_gmlp.models import recipe
from keras_gmlp.models.image_classifier import GMLPImageClassifier
from keras_gmlp.models.masked_lm import GMLPMaskedLM
from keras_gmlp.models.presets import TEXT_PRESETS
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.text_backbone import GMLPBackbone
from keras_gmlp.models.text_classifier import GMLPTextClassifier
from keras_gmlp.models.text_preprocessors import GMLPMaskedLMPreprocessor
from keras_gmlp.models.text_preprocessors import GMLPTextClassifierPreprocessor
from keras_gmlp.models.tokenizer import GMLPTokenizer
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone

__all__ = [
    "GMLPBackbone",
    "GMLPImageClassifier",
    "GMLPMaskedLM",
    "GMLPMaskedLMPreprocessor",
    "GMLPTextClassifier",
    "GMLPTextClassifierPreprocessor",
    "GMLPTokenizer",
    "GMLPVisionBackbone",
    "TEXT_PRESETS",
    "VISION_PRESETS",
    "recipe",
]
