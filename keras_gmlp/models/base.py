"""Shared plumbing of keras_gmlp's models: keras-hub base classes plus named configurations.

Backbones are `keras_hub.models.Backbone`s and tasks are keras-hub tasks, so keras-hub's
generic entry points (`keras_hub.models.Backbone.from_preset(dir)`,
`keras_hub.models.TextClassifier.from_preset(dir, num_classes=...)`, `save_to_preset`,
`keras_hub.upload_preset`) work on them. On top of keras-hub, `from_preset` on a keras_gmlp
class also accepts the name of one of the paper's configurations (`presets.py`): such a name
carries no weights, so it builds a freshly initialised model, with overrides.
"""


import os

import keras
import keras_hub
from keras_hub.src.utils.preset_utils import builtin_presets
from keras_hub.src.utils.python_utils import classproperty

from keras_gmlp import kernels
from keras_gmlp import validation
from keras_gmlp.layers.quantization import dtype_config
from keras_gmlp.models import arguments
from keras_gmlp.models.lora import LoraMixin
from keras_gmlp.models.presets import preset_entries
from keras_gmlp.version import __version__


def export_standard_ops(model_cls, model, filepath, format, verbose, input_signature, kwargs):
    """`keras.Model.export` traced on the layers' plain path (`kernels.disabled()`).

    The fused kernels are XLA-compiled functions with custom gradients: an exported graph would
    hold them as `PartitionedCall`s that onnxruntime, tf2onnx and LiteRT cannot run. Their
    plain path is standard ops only, with an erf-form GELU that tf2onnx converts and the LiteRT
    converter fuses into its builtin GELU. Inference in Python keeps the kernels: the plain
    path's forward pass ran at 1.34x the kernels' time (6 gMLP-S/16 blocks, batch 8, float32,
    2 loaded cores), so choosing by `training` alone would have cost that much at inference.
    """
    with kernels.disabled():
        return super(model_cls, model).export(filepath, format=format, verbose=verbose,
                                              input_signature=input_signature, **kwargs)


class BackboneBase(LoraMixin, keras_hub.models.Backbone):
    """A keras-hub `Backbone` whose config is its constructor arguments plus the version.

    `enable_lora(rank)` adapts the gMLP projections and the tiny attention's (`lora.py`).

    Subclasses set `named_presets` ({name: constructor arguments}) and implement
    `validate_arguments(**kwargs)`.
    """

    named_presets = {}

    @classproperty
    def presets(cls):
        """keras-hub's `Backbone.presets`: {name: {"metadata": {"description", "params",
        "path"}, "config"}} for the named configurations (`cls.named_presets`; no weights),
        plus any preset registered with keras-hub for the class."""
        return {**preset_entries(cls.named_presets), **builtin_presets(cls)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        resolve_policy_maps(self)

    def get_config(self):
        # keras-hub's Backbone.get_config, except for `dtype`: after `quantize`, keras-hub writes
        # a DTypePolicyMap with `default_policy=None`, whose serialization renames the live
        # layers' quantized policies to None and reloads a mixed_bfloat16 model in the global
        # policy (float32 outputs). `dtype_config` keeps the backbone's own policy as the
        # map's default and the quantized policies' source names.
        dtype = dtype_config(self)
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype,
            # The version travels in every config, so a saved model can be traced to its code.
            arguments.VERSION_KEY: __version__,
        }
        if dtype["class_name"] == "DTypePolicyMap":
            # keras-hub's `Backbone.from_preset` replaces `dtype` by the caller's (None when
            # not given), which would drop the quantized layers' policies: see from_config.
            config[QUANTIZED_DTYPE_KEY] = dtype
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantized = config.pop(QUANTIZED_DTYPE_KEY, None)
        if quantized is not None:
            config["dtype"] = with_quantized_layers(config.get("dtype"), quantized)
        return super().from_config(config)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Keras' `Model.export` (`tf_saved_model`, `onnx`, `litert`, `openvino`), traced with
        standard ops only: the fused kernels are left out (`export_standard_ops`)."""
        return export_standard_ops(BackboneBase, self, filepath, format, verbose, input_signature, kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A preset directory or hub handle (keras-hub's loader), or a named configuration.

        Args:
            preset: a directory written by `save_to_preset`, a `kaggle://` / `hf://` handle,
                or a name in `cls.named_presets` (random initialisation; `load_weights` is
                then irrelevant).
            load_weights: load the preset's weights (directories and handles).
            **kwargs: constructor arguments overriding the preset's (named configurations:
                any argument; directories: `dtype` and, for images, `image_shape`, as
                keras-hub forwards them).
        """
        if isinstance(preset, str) and preset in cls.named_presets:
            return cls(**{**cls.named_presets[preset], **kwargs})
        check_preset_location(preset, cls.named_presets)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


# A quantized backbone's config holds its DTypePolicyMap here as well as under `dtype`.
QUANTIZED_DTYPE_KEY = "quantized_dtype"


def with_quantized_layers(dtype, quantized):
    """The policy to rebuild a quantized backbone with.

    Args:
        dtype: the config's `dtype` (None or a float policy when keras-hub's preset loader
            replaced the saved one, or the saved DTypePolicyMap).
        quantized: the saved DTypePolicyMap (serialized).
    """
    quantized = keras.dtype_policies.get(quantized)
    if dtype is None:
        return quantized  # keras-hub's rule for a quantized preset: the saved policies verbatim
    dtype = keras.dtype_policies.get(dtype)
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return dtype
    # A float policy the caller asked for (`from_preset(dir, dtype=...)`) is the new default.
    return keras.dtype_policies.DTypePolicyMap(
        default_policy=dtype, policy_map={path: quantized[path] for path in quantized})


def resolve_policy_maps(model):
    """Gives each built sub-layer of `model` that holds a DTypePolicyMap its own policy.

    A layer built with a DTypePolicyMap (a reloaded quantized model) looks its policy up by
    path, but Keras 3.15's `Dense.save_own_variables` reads `dtype_policy.quantization_mode`
    unresolved (the map's default, None) and writes no `kernel_scale`, so such a model cannot
    be saved again. Once built, the looked-up policy is the same thing.
    """
    for layer in model._flatten_layers(include_self=False):
        policy = layer._dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path:
            layer._dtype_policy = policy[layer.path]


def task_arguments(task_cls):
    """Names `task_cls.__init__` takes itself (the rest of a named preset's kwargs go to the
    backbone)."""
    required, optional = arguments.signature_arguments(task_cls)
    return set(required) | set(optional) | {"name", "compile"}


class TaskMixin:
    """What every keras_gmlp task adds to its keras-hub task base class.

    keras-hub's `Task.get_config` stores the backbone (whose config carries the policies of its
    quantized layers) but nothing about the task's own layers, so after `quantize` a reloaded
    task builds a float head and cannot load the quantized head's weights (keras-hub's
    `BertTextClassifier` fails so). Here the task's layers are built with `head_dtype`, and
    `get_config` writes there a `keras.dtype_policies.DTypePolicyMap` from each quantized task
    layer's path to its policy, which those layers look up when they are built.
    """

    @classproperty
    def presets(cls):
        """The backbone class' `presets` (keras-hub's `Task.presets`: a task has its backbone's)."""
        return {**cls.backbone_cls.presets, **builtin_presets(cls)}

    def _head_policy(self, head_dtype, default):
        """The dtype policy to build the task's own layers with (call before building them).

        Args:
            head_dtype: the constructor's `head_dtype` (None, a policy or its config, or the
                DTypePolicyMap `get_config` writes).
            default: the policy for None (the backbone's, or float32 for a masked-LM head).
        """
        arguments.check_dtype(head_dtype, name="head_dtype")
        self._head_dtype = head_dtype
        if head_dtype is None:
            # A reloaded quantized backbone's policy is its own map: the head takes its default.
            policy = float_policy(keras.dtype_policies.get(default))
        else:
            policy = keras.dtype_policies.get(head_dtype)
        self._head_float_policy = float_policy(policy)
        return policy

    def _task_config(self, config):
        """`config` (keras-hub's task config) plus the version and `head_dtype`."""
        config = {**config, arguments.VERSION_KEY: __version__}
        backbone_layers = {id(layer) for layer in self.backbone._flatten_layers()}
        quantized = {
            layer.path: layer_policy(layer)
            for layer in self._flatten_layers(include_self=False)
            if id(layer) not in backbone_layers and layer.quantization_mode is not None
        }
        head_dtype = self._head_dtype
        if quantized:
            head_dtype = keras.dtype_policies.DTypePolicyMap(
                default_policy=self._head_float_policy, policy_map=quantized)
        if head_dtype is not None:
            config["head_dtype"] = keras.dtype_policies.serialize(
                keras.dtype_policies.get(head_dtype))
        return config

    def get_config(self):
        return self._task_config(super().get_config())

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Keras' `Model.export` (`tf_saved_model`, `onnx`, `litert`, `openvino`), traced with
        standard ops only: the fused kernels are left out (`export_standard_ops`)."""
        return export_standard_ops(TaskMixin, self, filepath, format, verbose, input_signature, kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop(arguments.VERSION_KEY, None)
        return super().from_config(config)

    def compile_from_config(self, config):
        # Keras skips compiling on load when `compile` is overridden (keras-hub tasks add
        # defaults); the saved config names every argument explicitly, so calling ours is
        # faithful.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A preset directory or hub handle (keras-hub's loader), or a named configuration.

        With a named configuration (`cls.backbone_cls.named_presets`), keyword arguments the
        task's constructor takes (`num_classes`, `dropout`, `preprocessor`, ...) go to the
        task and all others override the backbone's configuration; there is no tokenizer,
        so the task has no preprocessor unless one is passed. With a directory,
        `num_classes` gives a freshly initialised head (keras-hub's rule).
        """
        if isinstance(preset, str) and preset in cls.backbone_cls.named_presets:
            own = task_arguments(cls)
            task_kwargs = {k: v for k, v in kwargs.items() if k in own}
            backbone_kwargs = {k: v for k, v in kwargs.items() if k not in own}
            backbone = cls.backbone_cls.from_preset(preset, **backbone_kwargs)
            return cls(backbone=backbone, **task_kwargs)
        check_preset_location(preset, cls.backbone_cls.named_presets)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


def check_preset_location(preset, named_presets):
    """A bare word that is neither a named configuration nor a directory: say what exists
    (keras-hub would report a missing config.json)."""
    if isinstance(preset, str) and "://" not in preset and not os.path.exists(preset):
        validation.check(False, "preset", preset,
                         f"one of the named configurations {sorted(named_presets)}, a preset "
                         "directory written by save_to_preset, or a kaggle:// or hf:// handle")


def check_task_kwargs(task_cls, kwargs):
    """Rejects keyword arguments no keras-hub task takes (keras.Model would ignore them)."""
    for name in kwargs:
        validation.check(name in ("name", "trainable", "dtype", "compile"), name, kwargs[name],
                         f"no such argument of {task_cls.__name__}; it takes "
                         f"{sorted(task_arguments(task_cls))}")


def check_backbone(task_cls, backbone, backbone_cls, what):
    validation.check(isinstance(backbone, backbone_cls), "backbone", f"<{type(backbone).__name__}>",
                     f"a {backbone_cls.__name__} ({what})")


def float_policy(policy):
    """`policy` itself, or a DTypePolicyMap's default policy."""
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy.default_policy
    return policy


def layer_policy(layer):
    """The policy `layer` computes with (a layer built with a DTypePolicyMap looks its path up)."""
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy[layer.path]
    return policy


def float32_logits(x, name="logits"):
    """Casts the head's output to float32 so losses are stable under mixed precision."""
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


