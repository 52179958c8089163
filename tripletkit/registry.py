"""Name-based registries: register by decorator, build from a name or a config dict, list what exists.

Every configurable piece of tripletkit (distances, margin functions, miners, losses, samplers, schedulers) lives in
a [`Registry`][tripletkit.registry.Registry], so that a training script or a YAML/JSON config can name it::

    >>> from tripletkit import DISTANCES
    >>> DISTANCES.list()
    ['cosine', 'euclidean', 'sqeuclidean']
    >>> DISTANCES.build("euclidean")
    EuclideanDistance()
    >>> DISTANCES.build({"name": "cosine"})
    CosineDistance()

An unknown name raises [`UnknownNameError`][tripletkit.registry.UnknownNameError] (a ``ValueError`` and a ``KeyError``) whose message lists the
valid names and the closest match.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """Raised for a name that is not registered. Subclasses both ``ValueError`` and ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from names to factories (classes or functions) of one kind.

    Args:
        kind: what the registry holds, used in error messages ("miner", "distance", ...).

    ``build`` accepts:

    * a registered name: ``build("batch_hard", swap=True)`` calls the factory with the keyword arguments;
    * a config dict with a ``"name"`` key: ``build({"name": "hinge", "margin": 0.3})``; extra keyword arguments
      override the dict's entries;
    * an object that is already built (not a ``str`` or mapping): returned unchanged, so APIs can take either,
      once it passes the registry's ``check`` (a ``TypeError`` naming the kind otherwise: ``margin_fn=3`` fails
      at construction, not later).

    Args:
        kind: what the registry holds, used in error messages.
        check: ``check(obj) -> bool`` for already-built objects (default: accept anything). The check asks for
            what the kind must be able to do, not for a base class, so duck-typed objects pass.
        expected: how the error message describes what ``check`` wants.
    """

    def __init__(self, kind: str, check: Callable[[object], bool] | None = None, expected: str = "") -> None:
        self.kind = kind
        self._check = check
        self._expected = expected
        self._entries: dict[str, Callable[..., T]] = {}

    def register(
        self, name: str | None = None, *, override: bool = False
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``).

        A registered class gets a ``registry_name`` attribute: the name is given once, here.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if not isinstance(key, str) or not key:
                raise TypeError(f"{self.kind} registry names must be non-empty strings, got {key!r}")
            if key in self._entries and not override and self._entries[key] is not factory:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered (to {self._entries[key]!r}); "
                    "pass override=True to replace it"
                )
            self._entries[key] = factory
            if isinstance(factory, type):
                try:
                    factory.registry_name = key  # type: ignore[attr-defined]
                except TypeError:  # a built-in type: registered under the name all the same
                    pass
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``; [`UnknownNameError`][tripletkit.registry.UnknownNameError] if there is none."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def build(self, spec: str | Mapping[str, Any] | T, **kwargs: Any) -> T:
        """Build an object from a name, a config dict, or pass an already-built object through."""
        if isinstance(spec, str):
            return self.get(spec)(**kwargs)
        if isinstance(spec, Mapping):
            params = dict(spec)
            if "name" not in params:
                raise ValueError(f"a {self.kind} config dict needs a 'name' key, got keys {sorted(params)}")
            name = params.pop("name")
            params.update(kwargs)
            return self.get(name)(**params)
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} given with an already-built {self.kind} {spec!r}")
        if self._check is not None and not self._check(spec):
            raise TypeError(
                f"expected a {self.kind} name, config dict or {self._expected or self.kind + ' object'}; "
                f"got {type(spec).__name__} {spec!r}"
            )
        return spec  # type: ignore[return-value]

    def list(self, filter: str | None = None) -> list[str]:  # noqa: A002 - timm's spelling, on purpose
        """Sorted registered names, optionally only those matching a shell-style pattern (``"*hard*"``)."""
        names = sorted(self._entries)
        if filter is None:
            return names
        return [n for n in names if fnmatch.fnmatchcase(n, filter)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"

    def _unknown_message(self, name: str) -> str:
        valid = self.list()
        msg = f"unknown {self.kind} {name!r}; valid names: {', '.join(valid) if valid else '(none registered)'}"
        close = difflib.get_close_matches(name, valid, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg
