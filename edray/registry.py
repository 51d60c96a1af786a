"""Name -> constructor registries (datasets, architectures), as torchdistill and timm do."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from edray.errors import EdrayError

__all__ = ["Registry"]

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps one name to one constructor; a duplicate name is an error.

    Args:
        kind: what the registry holds, used in error messages ("dataset").
        field: the spec field that names an entry, used as the error path.
    """

    def __init__(self, kind: str, field: str):
        self.kind = kind
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorate(fn: T) -> T:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise EdrayError(
                self.field, f"unknown {self.kind} {name!r}", f"use one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
