"""Argument checks shared by every keras_gmlp module, with one message style.

Each check raises `ValueError("`name`=value: expected what.")`, naming the argument, the value
it got and what it expected, so that a bad constructor argument, call argument or pipeline option
reads the same wherever it is caught. Python's `bool` is an `int`; the checks reject it where a
number is expected.
"""

import math
import numbers


def check(condition, name, value, expected):
    """Raises `ValueError` naming `name`, its `value` and what was `expected` unless `condition`."""
    if not condition:
        raise ValueError(f"`{name}`={value!r}: expected {expected}.")


def is_int(value):
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    """`value` as an int >= 1."""
    check(is_int(value) and value >= 1, name, value, "a positive int")
    return int(value)


def check_non_negative_int(name, value):
    """`value` as an int >= 0."""
    check(is_int(value) and value >= 0, name, value, "an int >= 0")
    return int(value)


def check_rate(name, value):
    """`value` as a float in [0, 1) (dropout and drop-path rates)."""
    check(isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1,
          name, value, "a float in [0, 1)")
    return float(value)


def check_positive_float(name, value):
    """`value` as a finite float > 0 (epsilons, scales)."""
    check(isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0, name, value, "a finite float > 0")
    return float(value)


def check_seed(name, value):
    """`value` as an int in [0, 2**31) (TensorFlow's stateless seeds are int32 on some paths)."""
    check(is_int(value) and 0 <= value < 2**31, name, value, "an int in [0, 2**31)")
    return int(value)
