"""keras_gmlp: gMLP and aMLP ("Pay Attention to MLPs", Liu et al. 2021) for Keras 3."""

from keras_gmlp import data
from keras_gmlp import export
from keras_gmlp import layers
from keras_gmlp import models
from keras_gmlp.layers import GMLPBlock
from keras_gmlp.layers import SpatialGatingUnit
from keras_gmlp.layers import TinyAttention
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPVisionBackbone
from keras_gmlp.version import __version__
