"""Shared plumbing for keras_gmlp's functional models."""

import keras

from keras_gmlp.version import __version__


class FunctionalModel(keras.Model):
    """A functional `keras.Model` whose config is its constructor arguments.

    Subclasses build their graph in `__init__`, call
    `super().__init__(inputs=..., outputs=..., **kwargs)` and then
    `self._remember_config(...)` with every constructor argument, as
    keras-hub's backbones do. Nested models are serialized with
    `keras.saving.serialize_keras_object` and listed in
    `_nested_model_args` so `from_config` revives them.
    """

    _nested_model_args = ()

    def _remember_config(self, **config):
        self._constructor_config = config

    def get_config(self):
        # The version travels in every .keras file, so a saved model can be traced to its code.
        config = {"name": self.name, "trainable": self.trainable, "keras_gmlp_version": __version__}
        for key, value in self._constructor_config.items():
            if key in self._nested_model_args:
                value = keras.saving.serialize_keras_object(value)
            config[key] = value
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("keras_gmlp_version", None)
        for key in cls._nested_model_args:
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def compile_from_config(self, config):
        # Keras skips compiling on load when `compile` is overridden (ours adds defaults); the
        # saved config names every argument explicitly, so calling our compile is faithful.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)


def float32_logits(x, name="logits"):
    """Casts the head's output to float32 so losses are stable under mixed precision."""
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)
