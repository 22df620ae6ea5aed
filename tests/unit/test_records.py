"""`quick_init`: frozen dataclasses keep every behaviour but the cost of their `__init__`."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from hmacfs.core.auth import Grant, PutAttempt
from hmacfs.core.records import quick_init
from hmacfs.storage.backend import StoredFile


@quick_init
@dataclass(frozen=True)
class Point:
    x: int
    y: int
    label: str | None = None


def test_fields_are_set_by_position_keyword_and_default() -> None:
    assert Point(1, 2) == Point(x=1, y=2, label=None)
    assert Point(1, y=2, label="a").label == "a"
    assert repr(Point(1, 2, "a")) == "Point(x=1, y=2, label='a')"


def test_the_class_stays_frozen_hashable_and_replaceable() -> None:
    point = Point(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 5  # type: ignore[misc]
    assert hash(point) == hash(Point(1, 2))
    assert {point, Point(1, 2)} == {point}
    assert dataclasses.replace(point, y=7) == Point(1, 7)
    assert pickle.loads(pickle.dumps(point)) == point
    assert dataclasses.asdict(point) == {"x": 1, "y": 2, "label": None}


def test_wrong_arguments_fail_as_the_dataclass_would() -> None:
    with pytest.raises(TypeError):
        Point(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, "a", "b")  # type: ignore[call-arg]


def test_the_per_request_records_use_it() -> None:
    for cls in (PutAttempt, Grant, StoredFile):
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        assert "_fields" in cls.__init__.__code__.co_varnames
    grant = Grant("a/b", 3, "text/plain", "v", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        grant.size = 4  # type: ignore[misc]


def test_classes_it_cannot_take_are_refused_where_they_are_defined() -> None:
    with pytest.raises(TypeError, match="frozen"):

        @quick_init
        @dataclass
        class Mutable:
            x: int

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclass(frozen=True)
        class Factory:
            x: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclass(frozen=True, kw_only=True)
        class KeywordOnly:
            x: int

    with pytest.raises(TypeError, match="no slots"):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class Slotted:
            x: int

    with pytest.raises(TypeError, match="no slots"):

        @quick_init
        @dataclass(frozen=True)
        class Checked:
            x: int

            def __post_init__(self) -> None:
                pass
