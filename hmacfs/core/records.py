"""Frozen dataclasses made on every request, without the cost of their frozen `__init__`.

A frozen dataclass's generated `__init__` sets each field through ``object.__setattr__``,
a slot wrapper called through the descriptor protocol: about 150 ns a field, four times what
setting an attribute costs. A small PUT makes five such records (what the signing schemes
saw, the grant, the partial file and its facts, the stored file), some thirty fields in all,
which is a twentieth of the Python it runs.

`quick_init` gives such a class an `__init__` that stores the fields straight into the
instance's ``__dict__``. Everything else stays the dataclass's: the class is still frozen
(assigning a field raises `dataclasses.FrozenInstanceError`), hashable, compared and shown
as before, and type checkers see the plain ``@dataclass(frozen=True)`` under it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")


def quick_init(cls: type[_T]) -> type[_T]:
    """Replace the `__init__` of `cls`, a frozen dataclass without slots, `__post_init__`,
    default factories, keyword-only or init-less fields, by one that fills ``__dict__``.
    Raises TypeError for a class it cannot take (at import, where the class is defined)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init:
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen dataclass")
    if hasattr(cls, "__slots__") or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init takes no slots and no __post_init__")
    names: list[str] = []
    defaults: dict[str, object] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if (
            not field.init
            or field.kw_only
            or field.default_factory is not dataclasses.MISSING
            or not field.name.isidentifier()
            or field.name in ("self", "_fields")
        ):
            raise TypeError(f"{cls.__name__}.{field.name}: quick_init takes plain fields")
        if field.default is not dataclasses.MISSING:
            defaults[f"_default_{field.name}"] = field.default
        names.append(field.name)
    params_text = ", ".join(
        f"{name}=_default_{name}" if f"_default_{name}" in defaults else name for name in names
    )
    body = "".join(f"\n    _fields[{name!r}] = {name}" for name in names)
    source = f"def __init__(self, {params_text}):\n    _fields = self.__dict__{body}\n"
    namespace: dict[str, Any] = dict(defaults)
    exec(source, namespace)  # noqa: S102 (the source is made of the class's own field names)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010 (a class's method replaced)
    return cls
