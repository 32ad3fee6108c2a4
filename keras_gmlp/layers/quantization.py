"""The dtype entry of a layer's config, so that quantized sub-layers survive a `.keras` round trip."""

import keras


def dtype_config(layer):
    """`layer`'s dtype policy as its config stores it.

    After `model.quantize(...)` a layer's Dense sub-layers hold int8 (or float8, int4) weights,
    but the layer creates them in its constructor from its own policy, so a reloaded layer
    would build float sub-layers and fail to load the quantized weights. Like keras-hub's
    `Backbone.get_config`, this stores a `keras.dtype_policies.DTypePolicyMap` from each
    quantized sub-layer's path to its policy; the reloaded layer passes the map to its
    sub-layers, which look their policy up by path when built.
    """
    policy = layer.dtype_policy
    if not isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        quantized = {
            sub.path: sub.dtype_policy
            for sub in layer._flatten_layers(include_self=False)
            if sub.quantization_mode is not None
        }
        if quantized:
            policy = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
            for path, sub_policy in quantized.items():
                policy[path] = sub_policy
    return keras.dtype_policies.serialize(policy)
