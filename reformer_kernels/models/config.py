"""ReformerConfig: the fields and defaults of transformers' ReformerConfig, without transformers.

A config.json written by ``save_pretrained`` here loads in transformers and the reverse; keys this
class does not know (transformers' bookkeeping such as ``transformers_version``) are kept as
attributes so that they survive a round trip.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch

from .._atomic import atomic_write
from .._json import read_json_object

CONFIG_NAME = "config.json"
ATTENTION_TYPES = ("lsh", "local")

# Every field of transformers' ReformerConfig (and the PretrainedConfig fields the models read),
# with transformers' default.
_DEFAULTS: dict[str, Any] = {
    "attention_head_size": 64,
    "attn_layers": ["local", "lsh", "local", "lsh", "local", "lsh"],
    "axial_norm_std": 1.0,
    "axial_pos_embds": True,
    "axial_pos_shape": [64, 64],
    "axial_pos_embds_dim": [64, 192],
    "chunk_size_lm_head": 0,
    "eos_token_id": 2,
    "feed_forward_size": 512,
    "hash_seed": None,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.05,
    "hidden_size": 256,
    "initializer_range": 0.02,
    "is_decoder": False,
    "layer_norm_eps": 1e-12,
    "local_num_chunks_before": 1,
    "local_num_chunks_after": 0,
    "local_attention_probs_dropout_prob": 0.05,
    "local_attn_chunk_length": 64,
    "lsh_attn_chunk_length": 64,
    "lsh_attention_probs_dropout_prob": 0.0,
    "lsh_num_chunks_before": 1,
    "lsh_num_chunks_after": 0,
    "max_position_embeddings": 4096,
    "num_attention_heads": 12,
    "num_buckets": None,
    "num_hashes": 1,
    "vocab_size": 320,
    "tie_word_embeddings": False,
    "use_cache": True,
    "classifier_dropout": None,
    "bos_token_id": None,
    "pad_token_id": 0,
    "chunk_size_feed_forward": 0,
    "num_labels": 2,
    "problem_type": None,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "dtype": None,
}
# The parameter dtypes a model can be loaded in (``dtype`` is saved as one of these names, as in transformers).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
HIDDEN_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "swish", "tanh")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or a float, not a bool, not NaN (every comparison with NaN is False, so a range check passes it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class ReformerConfig:
    """The hyper-parameters of a Reformer model; see transformers' ReformerConfig for each field.

    Differences: nothing is mutated at run time (``num_buckets=None`` is resolved per call from the
    sequence length), and every field is validated here, with errors that name the field and the fix.
    ``num_hidden_layers`` is ``len(attn_layers)``.
    """

    model_type = "reformer"
    # Output fields that evaluation loops (transformers' Trainer) leave out of the predictions.
    keys_to_ignore_at_inference = ["past_buckets_states"]

    def __init__(self, **kwargs: Any):
        id2label = kwargs.pop("id2label", None)
        kwargs.pop("label2id", None)
        num_hidden_layers = kwargs.pop("num_hidden_layers", None)
        kwargs.pop("model_type", None)
        # transformers' configs before 4.56 name the dtype torch_dtype
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = torch_dtype
        values = dict(_DEFAULTS)
        values.update(kwargs)
        if id2label is not None and "num_labels" in kwargs and kwargs["num_labels"] != len(id2label):
            raise ValueError(
                f"ReformerConfig: num_labels={kwargs['num_labels']!r} disagrees with id2label, which names "
                f"{len(id2label)} labels: pass one of them"
            )
        if id2label is not None:
            values["num_labels"] = len(id2label)
        num_labels = values.pop("num_labels")
        self._name_or_path = values.pop("_name_or_path", "")
        for name, value in values.items():
            setattr(self, name, value)
        if num_hidden_layers is not None and num_hidden_layers != len(self.attn_layers):
            raise ValueError(
                f"ReformerConfig: num_hidden_layers={num_hidden_layers!r} but attn_layers lists {len(self.attn_layers)} "
                "layers: the number of layers is len(attn_layers), so change attn_layers"
            )
        # transformers' tests and JSON give tuples or lists; anything else is left for validate() to name.
        for name in ("attn_layers", "axial_pos_shape", "axial_pos_embds_dim", "num_buckets"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        if id2label is not None and not isinstance(id2label, dict):
            raise ValueError(f"ReformerConfig.id2label must be a dict {{label id: name}}, got {type(id2label).__name__}")
        if id2label:
            try:
                self.id2label = {int(k): v for k, v in id2label.items()}
            except ValueError:
                raise ValueError(f"ReformerConfig.id2label keys must be label ids (ints), got {list(id2label)!r}") from None
        else:
            self.id2label = {}
            self.num_labels = num_labels
        self.validate()

    @property
    def num_hidden_layers(self) -> int:
        return len(self.attn_layers)

    @property
    def num_labels(self) -> int:
        """``len(id2label)``; setting another number replaces id2label/label2id by LABEL_0, LABEL_1, ...
        (as transformers' PretrainedConfig), so that the heads built from the config have that many outputs."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if not _is_int(num_labels) or num_labels < 1:
            raise ValueError(f"ReformerConfig.num_labels must be a positive int, got {num_labels!r}")
        if num_labels != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    @property
    def name_or_path(self) -> str:
        """The directory the config was loaded from ("" for a new one); not saved, as in transformers."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = os.fspath(value)

    @property
    def use_return_dict(self) -> bool:
        """Whether forward returns a ModelOutput (else a tuple), when its return_dict argument is None."""
        return self.return_dict

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field and how to fix it.

        The fields of a layer type that ``attn_layers`` does not use are not checked (transformers'
        own tests give a local-only config ``lsh_* = None``)."""
        if not isinstance(self.attn_layers, list) or not all(isinstance(name, str) for name in self.attn_layers):
            raise ValueError(
                f"ReformerConfig.attn_layers must be a list of layer types, e.g. ['local', 'lsh'], got {self.attn_layers!r}"
            )
        if not self.attn_layers:
            raise ValueError("ReformerConfig.attn_layers is empty: list at least one layer type, e.g. ['local', 'lsh']")
        unknown = [name for name in self.attn_layers if name not in ATTENTION_TYPES]
        if unknown:
            raise ValueError(
                f"ReformerConfig.attn_layers has unknown layer types {unknown}: use only 'lsh' and 'local'"
            )
        kinds = [kind for kind in ATTENTION_TYPES if kind in self.attn_layers]
        positive = ["hidden_size", "attention_head_size", "num_attention_heads", "feed_forward_size", "vocab_size",
                    "max_position_embeddings", "num_labels"]
        positive += ["num_hashes"] if "lsh" in kinds else []
        for name in positive + [f"{kind}_attn_chunk_length" for kind in kinds]:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ReformerConfig.{name} must be a positive int, got {value!r}")
        non_negative = ["chunk_size_feed_forward", "chunk_size_lm_head"]
        non_negative += [f"{kind}_num_chunks_{side}" for kind in kinds for side in ("before", "after")]
        for name in non_negative:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"ReformerConfig.{name} must be an int >= 0, got {value!r}")
        probabilities = ["hidden_dropout_prob"] + [f"{kind}_attention_probs_dropout_prob" for kind in kinds]
        probabilities += ["classifier_dropout"] if self.classifier_dropout is not None else []
        for name in probabilities:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise ValueError(f"ReformerConfig.{name} must be a probability in [0, 1), got {value!r}")
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < math.inf:
            raise ValueError(
                f"ReformerConfig.layer_norm_eps must be a finite number > 0 (LayerNorm divides by sqrt(var + eps)), "
                f"got {self.layer_norm_eps!r}; transformers' default is 1e-12"
            )
        for name in ("initializer_range", "axial_norm_std"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ValueError(f"ReformerConfig.{name} must be a finite number >= 0 (a standard deviation), got {value!r}")
        for name in ("is_decoder", "axial_pos_embds", "use_cache", "tie_word_embeddings", "output_hidden_states",
                     "output_attentions", "return_dict"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ReformerConfig.{name} must be true or false, got {value!r}")
        self._validate_token_ids()
        if isinstance(self.dtype, torch.dtype):
            self.dtype = str(self.dtype).removeprefix("torch.")
        if self.dtype is not None and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"ReformerConfig.dtype must be None or one of {FLOAT_DTYPES} (the parameters' dtype), got {self.dtype!r}")
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"ReformerConfig.hidden_act {self.hidden_act!r} is not supported: choose one of {HIDDEN_ACTIVATIONS}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"ReformerConfig.problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if self.hash_seed is not None and not _is_int(self.hash_seed):
            raise ValueError(f"ReformerConfig.hash_seed must be an int or None, got {self.hash_seed!r}")
        if "lsh" in kinds:
            self._validate_num_buckets()
        if self.axial_pos_embds:
            self._validate_axial()

    def _validate_token_ids(self) -> None:
        # pad_token_id pads inputs inside the model (an embedding lookup); eos/bos ids end and start
        # generation: each must be a token of the vocabulary. eos may list several (transformers).
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = [] if value is None else value if name == "eos_token_id" and isinstance(value, (list, tuple)) else [value]
            if not all(_is_int(i) and 0 <= i < self.vocab_size for i in ids):
                kind = "an int or a list of ints" if name == "eos_token_id" else "an int"
                raise ValueError(
                    f"ReformerConfig.{name} must be None or {kind} in [0, vocab_size={self.vocab_size}), got {value!r}: "
                    "use an id of the tokenizer's vocabulary or raise vocab_size"
                )

    def _validate_num_buckets(self) -> None:
        buckets = self.num_buckets
        if buckets is None:
            return
        factors = [buckets] if _is_int(buckets) else buckets
        if not isinstance(factors, list) or not factors or not all(_is_int(f) and f >= 2 and f % 2 == 0 for f in factors):
            raise ValueError(
                f"ReformerConfig.num_buckets {buckets!r} must be an even int >= 2 or a list of even factors "
                "(e.g. 64 or [8, 8]), or None to choose it from the sequence length"
            )

    def _validate_axial(self) -> None:
        shape, dims = self.axial_pos_shape, self.axial_pos_embds_dim
        if not isinstance(shape, list) or not shape or not all(_is_int(n) and n >= 1 for n in shape):
            raise ValueError(f"ReformerConfig.axial_pos_shape must be a list of positive ints, got {shape!r}")
        if not isinstance(dims, list) or len(dims) != len(shape) or not all(_is_int(d) and d >= 1 for d in dims):
            raise ValueError(
                f"ReformerConfig.axial_pos_embds_dim {dims!r} must list one positive dim per factor of "
                f"axial_pos_shape {shape!r}"
            )
        if sum(dims) != self.hidden_size:
            raise ValueError(
                f"ReformerConfig.axial_pos_embds_dim {dims!r} sums to {sum(dims)} but must sum to hidden_size "
                f"{self.hidden_size}: change the dims or hidden_size"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that transformers' ReformerConfig also reads."""
        out = {name: copy.deepcopy(value) for name, value in vars(self).items() if name != "_name_or_path"}
        out["id2label"] = dict(self.id2label)
        out["label2id"] = self.label2id
        out["num_hidden_layers"] = self.num_hidden_layers
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ReformerConfig":
        return cls(**values)

    def to_json_string(self, use_diff: bool = True) -> str:
        """The JSON of ``to_dict()``. Every field is written whatever ``use_diff`` (transformers' callers
        pass it to get only the fields that differ from the defaults; the file loads the same)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ReformerConfig":
        name = f"config file {os.fspath(path)!r}"
        try:
            values = read_json_object(path, name, "re-save it")
        except FileNotFoundError:
            raise ValueError(f"config file {os.fspath(path)!r} does not exist: save one with config.save_pretrained(dir)") from None
        except IsADirectoryError:
            raise ValueError(f"config file {os.fspath(path)!r} is a directory: pass the file or the directory that holds config.json") from None
        if values.get("model_type", "reformer") != "reformer":
            raise ValueError(f"config file {os.fspath(path)!r} has model_type {values['model_type']!r}, expected 'reformer'")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config file {os.fspath(path)!r}: {error}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "ReformerConfig":
        """Read ``path/config.json`` (or ``path`` itself when it is a file); ``overrides`` replace fields.
        ``num_labels`` replaces the saved labels by that many (as transformers), unless id2label is given too."""
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        config = cls.from_json_file(file)
        if overrides:
            config = config.with_overrides(overrides)
        config.name_or_path = path
        return config

    def with_overrides(self, overrides: dict[str, Any]) -> "ReformerConfig":
        """A new config: this one with ``overrides`` replacing fields (validated). ``num_labels``
        replaces the labels by that many (as transformers), unless id2label is given too."""
        values = {**self.to_dict(), **overrides}
        if "num_labels" in overrides and "id2label" not in overrides:
            values.pop("id2label")
        config = type(self).from_dict(values)
        config.name_or_path = self.name_or_path
        return config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReformerConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ReformerConfig {self.to_json_string()}"
