"""What a checker is (a verdict function and the kwargs it takes) and how its kwargs are validated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RELATIONS = ("less than", "at least")


class KwargError(ValueError):
    """A record's kwargs do not fit its instruction; the message names the field."""


def _count(name: str, value) -> int:
    # bool is an int subclass, and `"num_words": true` is a data error, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KwargError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KwargError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _texts(name: str, value) -> list[str]:
    if not isinstance(value, list) or not value:
        raise KwargError(f"{name} must be a non-empty list of strings, got {value!r}")
    return [_text(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _relation(name: str, value) -> str:
    if value not in RELATIONS:
        raise KwargError(f"{name} must be one of {', '.join(map(repr, RELATIONS))}, got {value!r}")
    return value


def _char(name: str, value) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise KwargError(f"{name} must be a single character, got {value!r}")
    return value


COUNT, TEXT, TEXTS, RELATION, CHAR = _count, _text, _texts, _relation, _char


def compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


@dataclass(frozen=True)
class Checker:
    check: Callable[..., bool]
    params: dict[str, Callable]

    def bind(self, kwargs) -> dict:
        """The validated kwargs; None values are dropped first (the HF copy of the data pads with them)."""
        if not isinstance(kwargs, dict):
            raise KwargError(f"kwargs must be an object, got {type(kwargs).__name__}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise KwargError(f"unexpected kwarg {unknown[0]!r} (takes {sorted(self.params) or 'none'})")
        missing = sorted(set(self.params) - set(given))
        if missing:
            raise KwargError(f"missing kwarg {missing[0]!r}")
        return {name: kind(name, given[name]) for name, kind in self.params.items()}
