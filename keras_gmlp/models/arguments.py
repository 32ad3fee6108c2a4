"""Constructor-argument checks shared by the models (messages in `keras_gmlp.validation`'s style).

Each backbone's `validate_arguments(**kwargs)` runs first thing in its `__init__`, before any
layer is built, and is public so that callers holding only a dict of arguments (the trainers'
`--model_overrides`) can reject a bad one before writing anything.
"""

import inspect

import keras

from keras_gmlp import validation

# Keyword arguments every Keras model takes besides its own (`keras.Model.__init__`).
KERAS_MODEL_ARGUMENTS = ("name", "trainable", "dtype")
# Written into every model config so a saved model can be traced to its code; ignored on load.
VERSION_KEY = "keras_gmlp_version"


def signature_arguments(cls):
    """(required, optional) names of `cls.__init__`'s explicit arguments, `self` excluded."""
    required, optional = [], []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        (required if parameter.default is parameter.empty else optional).append(name)
    return required, optional


def check_known_arguments(cls, arguments, extra=KERAS_MODEL_ARGUMENTS):
    """Raises ValueError for an argument `cls` does not take, or a missing required one."""
    required, optional = signature_arguments(cls)
    known = set(required) | set(optional) | set(extra)
    for name in arguments:
        validation.check(name in known, name, arguments[name],
                         f"no such argument of {cls.__name__}; it takes {sorted(known)}")
    for name in required:
        validation.check(name in arguments, name, "<missing>",
                         f"a value: {cls.__name__} requires {required}")


def check_bool(name, value):
    validation.check(isinstance(value, bool), name, value, "True or False")
    return value


def check_spatial_projection(name, value):
    """The Spatial Gating Unit's token mixing: "dense" or "toeplitz"."""
    from keras_gmlp.layers.spatial_gating_unit import SPATIAL_PROJECTIONS

    validation.check(value in SPATIAL_PROJECTIONS, name, value, f"one of {SPATIAL_PROJECTIONS}")
    return value


def check_optional_positive_int(name, value):
    if value is not None:
        validation.check_positive_int(name, value)
    return value


def check_even_positive_int(name, value, why):
    validation.check(validation.is_int(value) and value >= 2 and value % 2 == 0, name, value,
                     f"an even int >= 2 ({why})")
    return int(value)


def check_dtype(value, name="dtype"):
    """`value` is None, a policy name ("mixed_bfloat16"), a dtype name, a policy or its config."""
    if value is None:
        return value
    try:
        keras.dtype_policies.get(value)
    except (ValueError, TypeError) as error:
        validation.check(False, name, value,
                         f'a dtype policy such as "float32" or "mixed_bfloat16" ({error})')
    return value


def check_name(value):
    validation.check(value is None or isinstance(value, str), "name", value, "a string")
    return value
