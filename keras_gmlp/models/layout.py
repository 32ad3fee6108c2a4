"""Model-parallel layouts of the gMLP/aMLP models for `keras.distribution.ModelParallel`.

The sharding follows Megatron-style tensor parallelism on the "model" mesh axis: each
block's two first channel projections (`channel_projection_u` and `channel_projection_v`,
the SGU's halves) are both split by output columns, so channel `c` of `u` and of `v` sit on the
same device; the spatial gating unit works on its shard of the channels (its LayerNorm's scale
and offset are split the same way; the spatial kernel mixes tokens, not channels, and is
replicated); and the second projection is split by input rows, so one all-reduce per block
joins the partial outputs forward (the gate LayerNorm's statistics over the channel shards add
small all-reduces of one value per token, and the backward pass its own). The token and
patch embeddings and the heads are split on the hidden dimension. Only hidden, feed-forward
and attention widths are split, never the vocabulary or the number of classes, so any
vocabulary size works; the model axis size must divide `hidden_dim`, `ffn_dim / 2` and the
tiny attention's `3 * attention_dim` and `attention_dim`.

Every variable not named here (LayerNorms of the residual stream, biases of row-split
projections, the spatial kernels, the MLM output bias) is replicated. The data is split on
the "batch" mesh axis.
"""

import keras


def get_layout_map(device_mesh, model_parallel_dim_name="model",
                   data_parallel_dim_name="batch"):
    """A `keras.distribution.LayoutMap` for the text and vision backbones and their heads.

    The signature of keras-hub's `Backbone.get_layout_map` (e.g. `GemmaBackbone`):

        mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
                                             keras.distribution.list_devices())
        layout_map = get_layout_map(mesh)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
        model = GMLPMaskedLM(GMLPBackbone.from_preset("gmlp_large"))  # created sharded

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with both axes named below.
        model_parallel_dim_name: the mesh axis the weights are split along.
        data_parallel_dim_name: the mesh axis the batch is split along (checked only: no
            weight is split along it).
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(f"`device_mesh`={device_mesh!r}: expected a "
                         "keras.distribution.DeviceMesh.")
    for argument, name in (("model_parallel_dim_name", model_parallel_dim_name),
                           ("data_parallel_dim_name", data_parallel_dim_name)):
        if name not in device_mesh.axis_names:
            raise ValueError(f"`{argument}`={name!r}: expected one of the mesh's axis names "
                             f"{list(device_mesh.axis_names)}.")
    model = model_parallel_dim_name
    layout_map = keras.distribution.LayoutMap(device_mesh)
    # Embeddings: split on the hidden dimension (a vocabulary need not divide the axis).
    layout_map["token_embedding/embeddings"] = (None, model)
    layout_map["patch_embedding/projection/kernel"] = (None, None, None, model)
    layout_map["patch_embedding/projection/bias"] = (model,)
    # gMLP blocks: u and v column-split alike, the SGU on its channel shard, row-split out.
    layout_map[r".*channel_projection_(u|v)/kernel"] = (None, model)
    layout_map[r".*channel_projection_(u|v)/bias"] = (model,)
    layout_map[r".*spatial_gating_unit/norm/(gamma|beta)"] = (model,)
    layout_map[r".*channel_projection_out/kernel"] = (model, None)
    # aMLP tiny attention: heads' projections column-split, output row-split.
    layout_map[r".*tiny_attention/qkv/kernel"] = (None, model)
    layout_map[r".*tiny_attention/qkv/bias"] = (model,)
    layout_map[r".*tiny_attention/output_projection/kernel"] = (model, None)
    # Heads: the MLM transform column-split; classifier heads row-split (classes stay whole).
    layout_map[r"mlm_head/intermediate_dense/kernel"] = (None, model)
    layout_map[r"mlm_head/intermediate_dense/bias"] = (model,)
    layout_map[r"head/kernel"] = (model, None)
    return layout_map
