"""keras_gmlp layers: the Spatial Gating Unit, gMLP/aMLP blocks and their helpers.

The layers state the paper's math in plain keras.ops; their fast path on the TensorFlow CPU
backend lives in `keras_gmlp.kernels`.
"""

from keras_gmlp.kernels import FastLayerNormalization
from keras_gmlp.kernels import disabled as fusion_disabled  # the name before keras_gmlp.kernels
from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling
from keras_gmlp.layers.patch_embedding import PatchEmbedding
from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.layers.tiny_attention import TinyAttention
from keras_gmlp.layers.toeplitz import ToeplitzProjection

__all__ = [
    "FastLayerNormalization",
    "GMLPBlock",
    "MaskedMeanPooling",
    "PatchEmbedding",
    "SpatialGatingUnit",
    "TinyAttention",
    "ToeplitzProjection",
    "fusion_disabled",
]
