"""Reading the JSON files the package writes (config.json, the tokenizers' files,
trainer_state.json): one check, so that a damaged file gets the same clear ValueError everywhere."""
from __future__ import annotations

import json
import os


def read_json_object(path: str | os.PathLike, name: str, fix: str) -> dict:
    """The JSON object in ``path``. A file that is not UTF-8 text, not JSON or not an object is a
    ValueError that starts with ``name`` (how the caller names the file) and ends with ``fix``."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except UnicodeDecodeError as error:
        raise ValueError(f"{name} is not UTF-8 text ({error}): {fix}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error}): {fix}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{name} must hold a JSON object, got {type(obj).__name__}: {fix}")
    return obj
