"""Model outputs that behave as transformers' ModelOutput: a dataclass (attribute access) that is
also an ordered mapping over the fields that are set (not None), in field order: ``out["logits"]``,
``keys()``, ``items()``, ``len``, ``in``, ``get``, ``dict(out)``, ``isinstance(out, dict)`` (which
transformers' Trainer and accelerate test); ``out[0]``, ``out[1:]`` and ``to_tuple()`` index
those fields' values like the tuple that ``return_dict=False`` returns."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

if TYPE_CHECKING:
    from .generation import ReformerDecodingCache


class ModelOutput(OrderedDict):
    """Base of the output dataclasses. As in transformers, the mapping cannot be edited with
    ``pop``/``update``/``del``/``setdefault``; setting a field (as an attribute or an item) updates it.
    Iterating yields the set fields' names (a mapping's keys): unpack the values with ``to_tuple()``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A pytree node, so that DistributedDataParallel (static_graph) and torch.utils._pytree see the
        # tensors inside an output instead of one opaque leaf.
        pytree.register_pytree_node(
            cls, _flatten, lambda values, keys: cls(**dict(zip(keys, values))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dataclass_fields__:
            self._sync()

    def _sync(self) -> None:
        """Rebuild the mapping from the fields, in field order, leaving out those that are None."""
        OrderedDict.clear(self)
        for field in dataclasses.fields(self):
            value = self.__dict__.get(field.name)
            if value is not None:
                OrderedDict.__setitem__(self, field.name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{type(self).__name__} has no field {key!r}; its fields are {list(self.__dataclass_fields__)}")
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} cannot be edited as a mapping: set a field instead (out.logits = ...)")

    __delitem__ = pop = popitem = update = setdefault = clear = _read_only

    def to_tuple(self) -> tuple:
        """The values of the fields that are set, in field order (what ``return_dict=False`` returns)."""
        return tuple(self.values())

    def __reduce__(self):
        # OrderedDict's pickling calls the class without arguments, which a dataclass with a
        # required first field refuses; copy.deepcopy and pickle go through here.
        return type(self), tuple(getattr(self, field.name) for field in dataclasses.fields(self))


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


@dataclasses.dataclass
class ReformerModelOutput(ModelOutput):
    """last_hidden_state (B, L, 2 * hidden): the final LayerNorm of concat(y1, y2);
    hidden_states: x2 before each layer and after the last, each (B, L, hidden), when asked;
    attentions: each layer's attention probabilities, when asked;
    past_buckets_states: the ReformerDecodingCache, with use_cache (see ReformerModel.forward)."""

    last_hidden_state: torch.Tensor
    past_buckets_states: ReformerDecodingCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class ReformerModelWithLMHeadOutput(ModelOutput):
    """loss: next-token cross-entropy when labels were given; logits (B, L, vocab) (see the head's
    forward for when they are skipped); past_buckets_states: the cache, with use_cache."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_buckets_states: ReformerDecodingCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
