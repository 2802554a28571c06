"""The base of gnomon's small immutable value classes, cheap to define at import.

``@dataclass(frozen=True, slots=True)`` writes each class's methods as source text and
compiles it when the module is imported (``slots=True`` then builds the class a second
time): 1-4 ms a class on this project's machines, most of the import time of the
protocol modules a query loads.  :class:`Frozen` gives the same behaviour (field-wise
``==`` and ``hash``, a ``Name(field=value, ...)`` repr, no assignment or deletion,
pickling and copying) from methods written once here, so defining a class costs what
a plain class statement costs.

A subclass lists its fields in ``__slots__`` (in order, with class annotations for the
type checker), its constructor's parameters in ``__match_args__``, and writes
``__init__`` setting each field with ``object.__setattr__`` (as dataclasses' own frozen
``__init__`` does); ``_compared`` names the fields ``==`` and ``hash`` use when not
all of them (a dataclass field's ``compare=False``).  Type checkers treat subclasses
as frozen dataclasses.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` is not imported at run time
if TYPE_CHECKING:
    from typing import ClassVar, NoReturn, dataclass_transform
else:

    def dataclass_transform(**_options):
        return lambda cls: cls


class FrozenInstanceError(AttributeError):
    """Assignment to (or deletion of) a field of a :class:`Frozen` value."""


@dataclass_transform(frozen_default=True)
class Frozen:
    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # __slots__, as a tuple
    _compared: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        cls._fields = tuple(cls.__dict__["__slots__"])
        if "_compared" not in cls.__dict__:
            cls._compared = cls._fields

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._compared])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self) -> tuple[type[Frozen], tuple[object, ...]]:
        return self.__class__, tuple([getattr(self, name) for name in self.__match_args__])

    if not TYPE_CHECKING:  # type checkers know the fields are read-only

        def __setattr__(self, name: str, value: object) -> NoReturn:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self, name: str) -> NoReturn:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
