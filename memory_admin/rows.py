"""Model rows from SQL written once, for the hot paths of the API.

The ORM compiles a query on every call; for the few queries every agent call makes (the token
lookup, a record read, the conditional write) the benchmark's profile put that compilation at a
sixth to a third of the web process's CPU. These queries are written once with `columns()`,
and `load()` turns their rows into ordinary model instances, converting values (JSON) as the
ORM would.

Timestamps are read by psycopg's C loader (`fast_timestamps`): Django's own loader for them is a
Python subclass of psycopg's Python loader, about 12 µs a value against 0.5 µs (measured), and an
API request reads about ten (the token, its agent, the record).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model
from psycopg import _cmodule
from psycopg.adapt import Loader

M = TypeVar("M", bound=Model)


@functools.cache
def columns(model: type[Model], alias: str) -> str:
    """Every column of `model` as `alias."column"`, in the order load() reads them."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


def load(model: type[M], row: Sequence[Any], start: int = 0) -> M:
    """The instance in row[start:], as columns(model) selected it."""
    names, converters = _fields(model)
    values = list(row[start : start + len(names)])
    for index, convert in converters:
        values[index] = convert(values[index])
    return model.from_db(connection.alias, names, values)


def width(model: type[Model]) -> int:
    """How many columns columns(model) selects: where the next model's columns start."""
    return len(_fields(model)[0])


@functools.cache
def _fields(model: type[Model]) -> tuple[list[str], list[tuple[int, Any]]]:
    names, converters = [], []
    for index, field in enumerate(model._meta.concrete_fields):
        names.append(field.attname)
        expression = field.get_col(model._meta.db_table)
        steps = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
        if steps:
            converters.append((index, _chain(steps, expression)))
    return names, converters


def _chain(steps: list, expression) -> Any:
    def convert(value: Any) -> Any:
        for step in steps:
            value = step(value, expression, connection)
        return value

    return convert


class FastTimestamptz(Loader):
    """timestamptz by psycopg's C loader, aware in UTC as Django's loader gives them. Only for
    connections whose session time zone is UTC (Django sets it from TIME_ZONE; the C loader reads
    values in the session's zone): `timezone` says so to Django, which otherwise puts its own
    loader back on each cursor."""

    timezone = datetime.UTC

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self.load = _cmodule._psycopg.TimestamptzLoader(oid, context).load  # called for every value

    def load(self, data: Any) -> datetime.datetime:  # replaced per instance (Loader requires one)
        raise NotImplementedError


def fast_timestamps(sender, connection, **kwargs) -> None:
    """On `connection_created`: read timestamps with FastTimestamptz where it gives what Django's
    loader would (psycopg's C module present, the connection's time zone UTC)."""
    if connection.vendor != "postgresql" or _cmodule._psycopg is None:
        return
    if connection.timezone == datetime.UTC and connection.timezone_name == "UTC":
        connection.connection.adapters.register_loader("timestamptz", FastTimestamptz)
