"""Reading timm checkpoints (safetensors, PyTorch pickles or in-memory mappings) as NumPy arrays."""

import logging
import os
from collections.abc import Mapping

import numpy as np

logger = logging.getLogger(__name__)

_SAFETENSORS_SUFFIXES = (".safetensors",)
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Wrappers that prefix every parameter name: torch DataParallel / DDP ("module.") and training
# scripts that save a wrapper holding the network as `self.model` ("model.").
_WRAPPER_PREFIXES = ("module.", "model.")


def load_timm_state_dict(source):
    """Loads a timm state dict as a `dict` of parameter name -> `np.ndarray`.

    Args:
        source: one of
            - a path to a `.safetensors` file (read with `safetensors.numpy`;
              no PyTorch needed). This is the format of timm's Hugging Face
              Hub weights, e.g. `timm/gmlp_s16_224.ra3_in1k`.
            - a path to a PyTorch `.pth` / `.pt` / `.bin` file holding
              `model.state_dict()` (or a training checkpoint with the state
              dict under `"state_dict"` or `"model"`). Needs `torch`; without
              it an `ImportError` says how to get a `.safetensors` file.
            - a mapping of names to arrays (NumPy arrays, or anything
              `np.asarray` or a torch tensor's `.numpy()` converts).

    If every name starts with `"module."` (DataParallel/DDP) or `"model."`
    (a wrapper module), that prefix is removed, repeatedly, and logged. No
    other name is changed and no entry is dropped: deciding which entries
    belong to the model is `timm_to_keras`'s strict check.

    Returns:
        `dict[str, np.ndarray]`, in the source's order.

    Raises:
        FileNotFoundError: `source` is a path that does not exist.
        ValueError: unknown file suffix, a value that is not numeric, or a
            tensor dtype NumPy cannot hold (bfloat16 safetensors).
        ImportError: a PyTorch file without `torch`, or a safetensors file
            without `safetensors`.
        TypeError: `source` is neither a path nor a mapping.
    """
    if isinstance(source, Mapping):
        items = source.items()
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"timm checkpoint {path!r} does not exist or is not a file.")
        suffix = os.path.splitext(path)[1].lower()
        if suffix in _SAFETENSORS_SUFFIXES:
            items = _read_safetensors(path).items()
        elif suffix in _TORCH_SUFFIXES:
            items = _read_torch(path).items()
        else:
            raise ValueError(
                f"Unknown checkpoint format for {path!r}: expected a file ending in one of "
                f"{_SAFETENSORS_SUFFIXES + _TORCH_SUFFIXES}."
            )
    else:
        raise TypeError(
            "`source` must be a checkpoint path (.safetensors, .pth, .pt, .bin) or a mapping of "
            f"names to arrays, got {type(source).__name__}."
        )
    state_dict = {str(name): _to_numpy(str(name), value) for name, value in items}
    return _strip_wrapper_prefixes(state_dict)


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise ImportError(
            f"Reading {path!r} needs the `safetensors` package: pip install safetensors"
        ) from error
    try:
        return load_file(path)
    except KeyError as error:
        # safetensors.numpy maps dtype names to NumPy types and has no entry for BF16.
        raise ValueError(
            f"{path!r} holds tensors of dtype {error.args[0]}, which NumPy cannot read. "
            "Save the state dict in float32 (timm's published weights are float32)."
        ) from error


def _read_torch(path):
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading the PyTorch checkpoint {path!r} needs torch (pip install torch). "
            "Alternatively convert it to safetensors where torch is installed: "
            "safetensors.torch.save_file(torch.load(path, map_location='cpu'), "
            "'model.safetensors'), or download timm's .safetensors weights from the "
            "Hugging Face Hub."
        ) from error
    # weights_only: unpickling arbitrary objects from a checkpoint can run code.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, Mapping) and not all(
        hasattr(value, "shape") for value in checkpoint.values()
    ):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                logger.info("Using the %r entry of the training checkpoint %s.", key, path)
                return checkpoint[key]
        raise ValueError(
            f"{path!r} is neither a state dict nor a checkpoint with a 'state_dict' or 'model' "
            f"entry; its top-level keys are {sorted(map(str, checkpoint))}."
        )
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path!r} holds a {type(checkpoint).__name__}, expected a state dict "
            "(save `model.state_dict()`, not the model)."
        )
    return checkpoint


def _to_numpy(name, value):
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy dtype, float32 is exact.
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(
            f"State dict entry {name!r} is not numeric (dtype {array.dtype}, "
            f"type {type(value).__name__})."
        )
    return array


def _strip_wrapper_prefixes(state_dict):
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(name.startswith(prefix) for name in state_dict):
                logger.info("Removing the prefix %r shared by every state dict name.", prefix)
                state_dict = {name[len(prefix) :]: value for name, value in state_dict.items()}
                stripped = True
    return state_dict
