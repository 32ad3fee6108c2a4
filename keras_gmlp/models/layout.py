"""Model-parallel layouts of the gMLP/aMLP models for `keras.distribution.ModelParallel`.

The sharding follows Megatron-style tensor parallelism on the "model" mesh axis: each
block's two first channel projections (`channel_projection_u` and `channel_projection_v`,
the SGU's halves) are both split by output columns, so channel `c` of `u` and of `v` sit on the
same device and the gate's product is local; the spatial gating unit works on its shard of the
channels (its LayerNorm's scale and offset are split the same way; the spatial kernel mixes
tokens, not channels, and is replicated); and the second projection is split by input rows, so
an all-reduce joins the partial outputs. aMLP's tiny attention (one head of `attention_dim`,
64 in the paper) is small next to the block: its `qkv` projection stays whole on every device
(split by columns it would put q, k and v on different devices and reshard them) and its
output projection is split by columns like `u` and `v`, so its term adds to the gate on the
same channel shard. The token and patch embeddings and the heads are split on the hidden
dimension. Only hidden and feed-forward widths are split, never the vocabulary or the number
of classes, so any vocabulary size works; the model axis size must divide `hidden_dim` and
`ffn_dim / 2` (`check_divisible`, run by the backbones, says which does not).

Collectives of a compiled `jax.grad` step (2 blocks, (1, 8) mesh, tests/test_model_parallel.py):
all-reduces (the row-split projections' partial sums and the gate LayerNorm's per-token
statistics, forward and backward) and all-gathers of the hidden-split embedding output; no
collective-permute or all-to-all, so no activation is resharded between devices.

Every variable not named here (LayerNorms of the residual stream, biases of row-split
projections, the spatial kernels, the tiny attention's qkv, the MLM output bias) is replicated.
The data is split on the "batch" mesh axis.
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
    # aMLP tiny attention: qkv replicated, the output column-split onto the gate's channel shard.
    layout_map[r".*tiny_attention/output_projection/kernel"] = (None, model)
    layout_map[r".*tiny_attention/output_projection/bias"] = (model,)
    # Heads: the MLM transform column-split; classifier heads row-split (classes stay whole).
    layout_map[r"mlm_head/intermediate_dense/kernel"] = (None, model)
    layout_map[r"mlm_head/intermediate_dense/bias"] = (model,)
    layout_map[r"head/kernel"] = (model, None)
    return layout_map


# (argument, variable path, axis of the variable that the argument sizes, divisor of the argument)
_SPLIT_DIMENSIONS = (
    ("hidden_dim", "token_embedding/embeddings", 1, 1),
    ("hidden_dim", "patch_embedding/projection/kernel", 3, 1),
    ("ffn_dim", "block_0/channel_projection_u/kernel", 1, 2),
    ("ffn_dim", "block_0/channel_projection_v/kernel", 1, 2),
    ("ffn_dim", "block_0/channel_projection_out/kernel", 0, 2),
)


def check_divisible(**dimensions):
    """Raises ValueError naming the argument when the current `ModelParallel` distribution would
    split one of a backbone's dimensions over a mesh axis whose size does not divide it.

    Without this JAX fails later, inside variable creation, with an `IndivisibleError` naming
    only shapes. Reads the distribution's own layouts (`get_tensor_layout` of the variables'
    paths), so any layout map is checked, not only `get_layout_map`'s.

    Args:
        **dimensions: the backbone's `hidden_dim` and `ffn_dim`.
    """
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.ModelParallel):
        return
    for argument, path, axis, divisor in _SPLIT_DIMENSIONS:
        if argument not in dimensions:
            continue
        layout = distribution.get_tensor_layout(path)
        if layout is None or axis >= len(layout.axes) or layout.axes[axis] is None:
            continue
        mesh = layout.device_mesh or distribution.device_mesh
        size = mesh.shape[list(mesh.axis_names).index(layout.axes[axis])]
        value = dimensions[argument]
        if (value // divisor) % size:
            split = "a" if divisor == 1 else f"{argument} / {divisor} ({value // divisor}) to be a"
            raise ValueError(
                f"`{argument}`={value}: expected {split} multiple of {size}, the size of the mesh "
                f"axis {layout.axes[axis]!r} that the ModelParallel layout splits {path} along.")
