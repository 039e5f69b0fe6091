"""Registries of named components (teachers, students, losses, compressors, datasets).

Built-ins are registered through this package's own entry points; other packages extend a
registry by declaring entry points in the same group, e.g. ``eastkd.teachers``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from eastkd.errors import EastkdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory, filled lazily from the entry-point group ``eastkd.<kind>``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = f"eastkd.{kind}"
        self._items: dict[str, Callable[..., T]] = {}
        self._loaded = False

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; a clear error listing valid names otherwise."""
        self._load_entry_points()
        if name not in self._items:
            raise EastkdError(
                f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}; "
                f"choose one of: {', '.join(self.names())}"
            )
        item = self._items[name]
        if hasattr(item, "load") and hasattr(item, "group"):
            item = item.load()
            self._items[name] = item
        return item  # type: ignore[return-value]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)


teachers: Registry[Any] = Registry("teachers")
students: Registry[Any] = Registry("students")
losses: Registry[Any] = Registry("losses")
compressors: Registry[Any] = Registry("compressors")
datasets: Registry[Any] = Registry("datasets")
