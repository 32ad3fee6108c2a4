"""keras_gmlp: gMLP and aMLP ("Pay Attention to MLPs", Liu et al. 2021) for Keras 3.

`keras_gmlp.layers` and `keras_gmlp.models` run on every Keras backend and need no TensorFlow;
`keras_gmlp.data` (tf.data pipelines) and `keras_gmlp.export` (SavedModel) do, so they are
imported on first use (`keras_gmlp.data`, `from keras_gmlp import data`).
"""

import importlib

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

_LAZY_SUBMODULES = ("data", "export")


def __getattr__(name):
    # PEP 562: `keras_gmlp.data` imports TensorFlow only when someone asks for it.
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"keras_gmlp.{name}")
    raise AttributeError(f"module 'keras_gmlp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_SUBMODULES))
