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
    block.channel_projection_in.kernel.assign(p["w1"])
    block.channel_projection_in.bias.assign(p["b1"])
    load_sgu(block.spatial_gating_unit, p)
    if block.tiny_attention is not None:
        load_tiny_attention(block.tiny_attention, p)
    block.channel_projection_out.kernel.assign(p["w2"])
    block.channel_projection_out.bias.assign(p["b2"])
