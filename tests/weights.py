"""Assigns numpy_reference parameter dicts to keras_gmlp layers, by attribute (not order)."""


def load_sgu(sgu, p):
    sgu.norm.gamma.assign(p["gate_gamma"])
    sgu.norm.beta.assign(p["gate_beta"])
    sgu.spatial_kernel.assign(p["w_spatial"])
    sgu.spatial_bias.assign(p["b_spatial"])


def load_tiny_attention(attention, p):
    attention.qkv.kernel.assign(p["wqkv"])
    attention.qkv.bias.assign(p["bqkv"])
    attention.output_projection.kernel.assign(p["wo"])
    attention.output_projection.bias.assign(p["bo"])


def load_block(block, p):
    block.norm.gamma.assign(p["norm_gamma"])
    block.norm.beta.assign(p["norm_beta"])
    # The reference's one (d, ffn) first projection: its first half of columns makes u, the
    # second v (the block's channel_projection_u and channel_projection_v).
    half = p["w1"].shape[-1] // 2
    block.channel_projection_u.kernel.assign(p["w1"][:, :half])
    block.channel_projection_u.bias.assign(p["b1"][:half])
    block.channel_projection_v.kernel.assign(p["w1"][:, half:])
    block.channel_projection_v.bias.assign(p["b1"][half:])
    load_sgu(block.spatial_gating_unit, p)
    if block.tiny_attention is not None:
        load_tiny_attention(block.tiny_attention, p)
    block.channel_projection_out.kernel.assign(p["w2"])
    block.channel_projection_out.bias.assign(p["b2"])
