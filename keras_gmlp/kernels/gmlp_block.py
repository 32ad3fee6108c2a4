"""A `GMLPBlock`'s gating half (LayerNorm, Dense(d_ffn), GELU, SGU) in fused kernels.

`GMLPBlock.call` states the math; this computes the same on the TensorFlow CPU path. The block's
first projection runs as two matmuls, one per SGU half, and its bias and GELU run inside the
SGU's kernels (keras_gmlp.kernels.spatial_gating), so the d_ffn-wide projection output is never
split, joined or stored whole. The previous layout (one d_ffn-wide matmul, a bias+GELU kernel,
a split, then the SGU kernels) ran at 0.96x of this one (4 gMLP-S blocks, float32,
`python -m benchmarks.run --sections variants`).
"""

from keras import ops

from keras_gmlp.kernels.layer_norm import layer_norm
from keras_gmlp.kernels.spatial_gating import gelu_spatial_gating_unit


def gmlp_block_gating(block, inputs, padding_mask=None):
    """`SGU(GELU(Dense_ffn(LayerNorm(x))), attention)` of a built `GMLPBlock`, on its weights.

    `block.channel_projection_in` must be a plain float Dense layer (not quantized, no LoRA):
    its kernel is read and split into the columns that make `u` and those that make `v`.
    """
    norm = block.norm
    x = layer_norm(ops.cast(inputs, block.compute_dtype), norm.gamma, norm.beta, norm.epsilon)
    attention = None
    if block.tiny_attention is not None:
        attention = block.tiny_attention(x, padding_mask=padding_mask)
    dense = block.channel_projection_in
    u_kernel, v_kernel = ops.split(ops.cast(dense.kernel, x.dtype), 2, axis=-1)
    u_bias, v_bias = ops.split(dense.bias, 2)
    return gelu_spatial_gating_unit(
        block.spatial_gating_unit,
        ops.matmul(x, u_kernel),
        ops.matmul(x, v_kernel),
        u_bias,
        v_bias,
        padding_mask=padding_mask,
        attention=attention,
    )
