"""LoRA on keras_gmlp's backbones: keras-hub's `Backbone.enable_lora` with gMLP's target layers,
and LoRA files that must fit the backbone they are loaded into.

keras-hub's `enable_lora(rank)` freezes the backbone and turns on LoRA in the `Dense` /
`EinsumDense` layers named by `get_lora_target_names()` (keras-hub PR #2166; keras-hub 0.32
calls it `default_lora_layer_names`), whose default lists attention names (`query_dense`, ...)
that no gMLP layer has. Here the defaults are every projection the gMLP block calls through
`Dense.call`: `channel_projection_u`, `channel_projection_v`, `channel_projection_out`, and
aMLP's tiny attention (`qkv`, `output_projection`). Only the LoRA factors train in the backbone
(a task's head outside it stays trainable): keras-hub would also train the adapted layers'
biases, which `save_lora_weights` does not save, so a LoRA file would not hold the fine-tuning.

`save_lora_weights` is keras-hub's (a `.lora.h5` file: the rank, and the two factors of each
adapted layer under its index among the backbone's layers with weights). `load_lora_weights`
checks that the file fits before assigning anything: the same adapted layers with the same
shapes, else a ValueError (keras-hub's loads what the indices happen to reach, or nothing).
"""

import h5py
import numpy as np

from keras_gmlp import validation

LORA_TARGET_NAMES = (
    "channel_projection_u",
    "channel_projection_v",
    "channel_projection_out",
    "qkv",
    "output_projection",
)


def _weighted_layers(backbone):
    # keras-hub's indexing: the backbone's layers that have weights, in `_flatten_layers` order.
    return [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]


def _read_lora_file(filepath):
    """(rank, {layer index: {"lora_kernel_a": array, "lora_kernel_b": array}}) of a file
    `save_lora_weights` wrote (Keras' H5 layout: `lora/vars/rank`, `lora/<i>/vars/...`)."""
    filepath = str(filepath)
    with h5py.File(filepath, "r") as file:
        validation.check("lora" in file and "vars" in file["lora"] and "rank" in file["lora/vars"],
                         "filepath", filepath, "a .lora.h5 file written by save_lora_weights")
        group = file["lora"]
        rank = int(group["vars"]["rank"][()])
        factors = {
            int(index): {name: np.asarray(value) for name, value in group[index]["vars"].items()}
            for index in group if index != "vars"
        }
    return rank, factors


class LoraMixin:
    """keras-hub's LoRA methods with gMLP's target layers and checked loading (see the module)."""

    def get_lora_target_names(self):
        """Names of the layers `enable_lora(rank)` adapts by default: the gMLP block's
        projections and the tiny attention's (keras-hub PR #2166's hook)."""
        return list(LORA_TARGET_NAMES)

    def default_lora_layer_names(self):
        """keras-hub 0.32's name for `get_lora_target_names`."""
        return self.get_lora_target_names()

    def _lora_layer_indices(self, target_layer_names):
        # The layers keras-hub's enable_lora would adapt, by its index.
        return [i for i, layer in enumerate(_weighted_layers(self))
                if layer.name in target_layer_names and hasattr(layer, "enable_lora")]

    def enable_lora(self, rank, target_layer_names=None):
        """Freezes the backbone and turns on rank-`rank` LoRA in the target layers (keras-hub's
        `Backbone.enable_lora`).

        Args:
            rank: int, the rank of the LoRA factors.
            target_layer_names: names of the Dense/EinsumDense layers to adapt; None: the
                `get_lora_target_names()` defaults. Names matching no such layer raise
                (keras-hub would freeze the whole backbone and adapt nothing).
        """
        validation.check_positive_int("rank", rank)
        names = self.get_lora_target_names() if target_layer_names is None else list(target_layer_names)
        if not self._lora_layer_indices(names):
            adaptable = sorted({layer.name for layer in _weighted_layers(self)
                                if hasattr(layer, "enable_lora")})
            validation.check(False, "target_layer_names", names,
                             f"names of this backbone's Dense/EinsumDense layers, such as {adaptable}")
        super().enable_lora(rank, target_layer_names=names)
        for i in self._lora_enabled_layers:
            layer = _weighted_layers(self)[i]
            if getattr(layer, "bias", None) is not None:
                layer.bias.trainable = False  # the LoRA file holds the factors only

    def load_lora_weights(self, filepath):
        """Loads LoRA factors `save_lora_weights` wrote, after checking that they fit.

        A backbone without LoRA gets it on the default targets first (keras-hub's rule), so
        files saved after `enable_lora(rank)` load into a fresh backbone; files saved with other
        targets need `enable_lora(rank, target_layer_names=...)` first.

        Raises:
            ValueError: the file's rank, adapted layers or factor shapes differ from this
                backbone's (nothing is loaded then, and a fresh backbone keeps no LoRA).
        """
        rank, factors = _read_lora_file(filepath)
        enabled = getattr(self, "_lora_enabled_layers", [])
        if enabled:
            validation.check(self._lora_rank == rank, "filepath", str(filepath),
                             f"LoRA factors of rank {self._lora_rank} (this backbone's "
                             f"enable_lora rank); the file's are rank {rank}")
        else:
            enabled = self._lora_layer_indices(self.get_lora_target_names())
        layers = _weighted_layers(self)

        def describe(indices):
            return [layers[i].path if i < len(layers) else f"<layer #{i}>" for i in sorted(indices)]

        validation.check(
            set(factors) == set(enabled), "filepath", str(filepath),
            f"LoRA factors for this backbone's LoRA layers {describe(enabled)}; the file has "
            f"them for {describe(factors)} (call enable_lora(rank, target_layer_names=...) as "
            "the saving model did)")
        for i in enabled:
            layer = layers[i]
            want = {"lora_kernel_a": (layer.kernel.shape[0], rank),
                    "lora_kernel_b": (rank, layer.kernel.shape[1])}
            got = {name: tuple(value.shape) for name, value in factors[i].items()}
            validation.check(got == want, "filepath", str(filepath),
                             f"LoRA factors of shapes {want} for {layer.path}; the file's are {got}")
        if not getattr(self, "_lora_enabled_layers", []):
            self.enable_lora(rank)
        for i in enabled:
            layers[i].lora_kernel_a.assign(factors[i]["lora_kernel_a"])
            layers[i].lora_kernel_b.assign(factors[i]["lora_kernel_b"])
