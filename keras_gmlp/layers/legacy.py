"""Loading what was saved before `GMLPBlock` split its first projection into `u` and `v`.

Until keras_gmlp 0.1.0 a block had one Dense layer, `channel_projection_in`, whose
`(hidden_dim, ffn_dim)` kernel and `(ffn_dim,)` bias held the SGU's bypass half `u` in their
first `ffn_dim / 2` columns and the gate half `v` in the rest. Now `channel_projection_u` and
`channel_projection_v` hold one half each. Old weights are split on load, column for column, so
an old model computes exactly what it did:

- `.keras` files and `model.weights.h5` (presets, `load_weights`): `LegacyProjectionLoader`,
  a block's variable-less child under the old attribute name (see its docstring);
- variable-path dicts and `get_weights()` lists: `split_values` and `split_weight_list`
  (trainer checkpoints, benchmarks against old commits).
"""

import keras
import numpy as np

OLD_NAME = "channel_projection_in"
NEW_NAMES = ("channel_projection_u", "channel_projection_v")


def split_projection(value):
    """`(u, v)`: the halves of an old `(hidden_dim, ffn_dim)` kernel or `(ffn_dim,)` bias along
    its last axis (the Dense layer's output columns)."""
    value = np.asarray(value)
    if value.shape[-1] % 2:
        raise ValueError(f"An old {OLD_NAME} weight of shape {value.shape} has an odd number of "
                         "columns; expected ffn_dim, even (u then v).")
    return tuple(np.split(value, 2, axis=-1))


def split_values(values):
    """`{variable path: value}` with each `.../channel_projection_in/{kernel,bias}` replaced by
    `.../channel_projection_u/...` and `.../channel_projection_v/...` halves; other entries are
    kept. A dict already in the new layout comes back unchanged."""
    result = {}
    for path, value in values.items():
        parts = path.split("/")
        if len(parts) >= 2 and parts[-2] == OLD_NAME:
            for name, half in zip(NEW_NAMES, split_projection(value)):
                result["/".join(parts[:-2] + [name, parts[-1]])] = half
        else:
            result[path] = value
    return result


def split_weight_list(paths, values):
    """An old model's `get_weights()` list in the order of the new model's `weights`: each
    block's `channel_projection_in` kernel and bias (adjacent, kernel first) become `u`'s kernel
    and bias, then `v`'s.

    Args:
        paths: the old model's variable paths (`[v.path for v in old_model.weights]`).
        values: its `get_weights()`.
    """
    paths, values = list(paths), list(values)
    result, i = [], 0
    while i < len(values):
        if paths[i].split("/")[-2:] == [OLD_NAME, "kernel"] and i + 1 < len(values) \
                and paths[i + 1].split("/")[-2:] == [OLD_NAME, "bias"]:
            (u_kernel, v_kernel), (u_bias, v_bias) = split_projection(values[i]), split_projection(values[i + 1])
            result += [u_kernel, u_bias, v_kernel, v_bias]
            i += 2
        else:
            result.append(values[i])
            i += 1
    return result


class LegacyProjectionLoader(keras.layers.Layer):
    """Receives an old file's `channel_projection_in` weights and writes them into `u` and `v`.

    The hook is Keras' public `Layer.load_own_variables(store)`. Keras' loader
    (`keras.src.saving.saving_lib._load_state`, used by `load_model`, `load_weights` and
    keras-hub's `from_preset`) walks a layer's attributes in sorted order and hands each child
    layer the store of its attribute path, so this variable-less child of a block, kept under the
    old attribute name, is handed exactly the old `.../channel_projection_in` entry: the file's
    own path, no private store API. It saves nothing, so new files have no such entry and
    `load_own_variables` then gets an empty store and does nothing.

    The walk visits `channel_projection_in` before `channel_projection_u` and
    `channel_projection_v`, whose own entries an old file lacks: a plain Dense layer would
    reject that empty entry, so after writing the halves this loader lets each of the two skip
    the one empty entry that follows (an instance-level `load_own_variables` that removes
    itself). A `Dense` subclass cannot do it: `Model.quantize` only quantizes exact `Dense`
    layers. Were the order ever different, the two layers would raise Keras' own "expected 2
    variables, but received 0": a loud failure, never silently unloaded weights.

    Old quantized files (`model.quantize` then save, before the split) are refused with a
    message: load the float file and quantize again.
    """

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        # Not tracked as a sub-layer: a plain attribute holding a callable, so Keras does not walk
        # the block again through this loader.
        self._projections = lambda: (block.channel_projection_u, block.channel_projection_v)
        self.built = True

    def call(self, inputs):
        raise NotImplementedError(
            f"{OLD_NAME} only loads old files: a block computes with channel_projection_u and "
            "channel_projection_v.")

    def enable_lora(self, *args, **kwargs):
        raise ValueError(f"`target_layer_names` names {OLD_NAME!r}, which is now two Dense layers: "
                         f"name {NEW_NAMES[0]!r} and {NEW_NAMES[1]!r}.")

    def save_own_variables(self, store):
        pass  # nothing: new files hold u and v in their own entries

    def load_own_variables(self, store):
        keys = sorted(store.keys())
        if not keys:
            return
        if keys != ["0", "1"]:
            raise ValueError(
                f"An old {OLD_NAME} entry with {len(keys)} arrays ({keys}): only float kernel and "
                "bias are split on load. A model quantized before the split cannot be loaded; "
                "load its float file (or preset) and call `quantize` again.")
        kernel, bias = np.asarray(store["0"]), np.asarray(store["1"])
        u, v = self._projections()
        for dense, k, b in zip((u, v), split_projection(kernel), split_projection(bias)):
            if dense.quantization_mode is not None:
                raise ValueError(
                    f"{dense.path} is quantized ({dense.quantization_mode}); old files load into "
                    "float models: load, then quantize.")
            dense.kernel.assign(k)
            dense.bias.assign(b)
            _skip_next_empty_load(dense)


def _skip_next_empty_load(dense):
    def load_own_variables(store):
        del dense.load_own_variables  # back to Dense.load_own_variables
        if len(store.keys()):
            raise ValueError(f"The file holds both {OLD_NAME} and {dense.name} weights for one "
                             "block; it is neither the old layout nor the new one.")

    dense.load_own_variables = load_own_variables
