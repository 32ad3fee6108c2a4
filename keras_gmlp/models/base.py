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

from keras_gmlp import kernels
from keras_gmlp import validation
from keras_gmlp.models import arguments
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


class BackboneBase(keras_hub.models.Backbone):
    """A keras-hub `Backbone` whose config is its constructor arguments plus the version.

    Subclasses set `named_presets` ({name: constructor arguments}) and implement
    `validate_arguments(**kwargs)`.
    """

    named_presets = {}

    def get_config(self):
        # The version travels in every config, so a saved model can be traced to its code.
        return {**super().get_config(), arguments.VERSION_KEY: __version__}

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


def task_arguments(task_cls):
    """Names `task_cls.__init__` takes itself (the rest of a named preset's kwargs go to the
    backbone)."""
    required, optional = arguments.signature_arguments(task_cls)
    return set(required) | set(optional) | {"name", "compile"}


class TaskMixin:
    """What every keras_gmlp task adds to its keras-hub task base class."""

    def get_config(self):
        return {**super().get_config(), arguments.VERSION_KEY: __version__}

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


def float32_logits(x, name="logits"):
    """Casts the head's output to float32 so losses are stable under mixed precision."""
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


