"""The client documents itself: every public method has a docstring, in the sync and the async
client alike, and client/README.md lists each with its arguments."""

from __future__ import annotations

import inspect

import pytest
from memory_admin_client import AsyncLock, AsyncMemoryClient, Lock, MemoryClient

from tests.conftest import ROOT

README = (ROOT / "client" / "README.md").read_text()


def public(cls) -> dict[str, object]:
    return {name: inspect.getattr_static(cls, name) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("cls", [MemoryClient, AsyncMemoryClient, Lock, AsyncLock])
def test_every_public_method_has_a_docstring(cls):
    undocumented = [
        name
        for name, member in public(cls).items()
        if callable(member) or isinstance(member, property)
        if not (getattr(member, "__doc__", None) or "").strip()
    ]
    assert not undocumented, f"{cls.__name__}: {undocumented}"


def test_the_async_client_has_the_sync_clients_methods():
    assert set(public(MemoryClient)) - {"close"} <= set(public(AsyncMemoryClient))


@pytest.mark.parametrize("cls", [MemoryClient, Lock])
def test_the_client_readme_lists_every_method_with_its_arguments(cls):
    for name, member in public(cls).items():
        if isinstance(member, property):
            assert f"`{name}`" in README, name
            continue
        if not callable(member):
            continue
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}(")), None)
        assert row is not None, f"{name} is not in client/README.md"
        for arg in inspect.signature(member).parameters:
            if arg != "self":
                assert arg in row.split("`")[1], f"{name}: argument {arg} is not in client/README.md"
