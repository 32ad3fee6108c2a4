"""Where keras_gmlp's speed lives: fused kernels for the TensorFlow backend on the CPU.

The layers (keras_gmlp.layers) state the paper's math in plain keras.ops, differentiated by
the backend's autodiff; that path runs on every backend. On the TensorFlow backend on the CPU,
where each keras.ops call is one kernel and one pass over memory, the leaf layers that own the
math (`FastLayerNormalization`, `SpatialGatingUnit`) take one explicit branch into the functions
here instead, which compute the same thing faster. The functions take tensors (a layer passes
its own weights); no code here reads another layer's variables, and the Dense projections
around them always run as Keras layers, so LoRA and quantization act on them:

- `fusion.fused`: an element-wise region compiled by XLA into one loop, with the matmuls left
  on TensorFlow's oneDNN kernels;
- `normalization`, `spatial_gating`: LayerNorm and the SGU's element-wise work (with a block's
  GELU) as such regions, with written-out gradients (`ops.custom_gradient`) that recompute
  instead of storing;
- `reductions`: sums placed where XLA's CPU backend runs them fast.

Each module states the measurement behind it (`python -m benchmarks.run --sections variants`).
`active()` says whether the fast path is taken; `disabled()` is the one opt-out, used by
`model.export` and SavedModel export (standard ops only) and by the tests and benchmarks that
compare both paths.
"""

from keras_gmlp.kernels.fusion import fused
from keras_gmlp.kernels.gelu import gelu_derivative
from keras_gmlp.kernels.gelu import gelu_value
from keras_gmlp.kernels.normalization import FastLayerNormalization
from keras_gmlp.kernels.normalization import layer_norm
from keras_gmlp.kernels.reductions import column_sum
from keras_gmlp.kernels.spatial_gating import gate_product
from keras_gmlp.kernels.spatial_gating import normalize_gate
from keras_gmlp.kernels.spatial_gating import spatial_gating
from keras_gmlp.kernels.switch import active
from keras_gmlp.kernels.switch import disabled

__all__ = [
    "FastLayerNormalization",
    "active",
    "column_sum",
    "disabled",
    "fused",
    "gate_product",
    "gelu_derivative",
    "gelu_value",
    "layer_norm",
    "normalize_gate",
    "spatial_gating",
]
