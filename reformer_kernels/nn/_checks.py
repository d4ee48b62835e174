"""Constructor checks of the nn modules: a bad hyper-parameter is a ValueError naming the module,
the argument and the value when the module is built, not a NaN or an index error at the first
forward. ReformerConfig checks the same fields for the models; these cover direct use."""
from __future__ import annotations

import math


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(module: str, name: str, value: object, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{module}: {name} must be an int >= {minimum}, got {value!r}")


def check_probability(module: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{module}: {name} must be a probability in [0, 1), got {value!r}")


def check_positive_float(module: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{module}: {name} must be a finite number > 0, got {value!r}")


def check_heads(module: str, hidden_size: object, num_attention_heads: object, attention_head_size: object) -> None:
    for name, value in (("hidden_size", hidden_size), ("num_attention_heads", num_attention_heads),
                        ("attention_head_size", attention_head_size)):
        check_int(module, name, value, 1)
