"""keras_gmlp layers: the Spatial Gating Unit, gMLP/aMLP blocks and their helpers."""

from keras_gmlp.layers.fusion import fusion_disabled
from keras_gmlp.layers.gelu import gelu_exact
from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.layers.layer_norm import FastLayerNormalization
from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling
from keras_gmlp.layers.patch_embedding import PatchEmbedding
from keras_gmlp.layers.spatial_gating_unit import SpatialGatingUnit
from keras_gmlp.layers.tiny_attention import TinyAttention

__all__ = [
    "FastLayerNormalization",
    "GMLPBlock",
    "MaskedMeanPooling",
    "PatchEmbedding",
    "SpatialGatingUnit",
    "TinyAttention",
    "fusion_disabled",
    "gelu_exact",
]
