"""Differences between JSON values, line by line, as the record and conflict pages show them."""

from __future__ import annotations

import difflib
import json
from typing import Any


def json_lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def line_diff(old: Any, new: Any) -> list[tuple[str, str]]:
    """The lines of `new` against `old`, each tagged ' ' (same), '-' (removed) or '+' (added)."""
    a, b = json_lines(old), json_lines(new)
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [(" ", line) for line in a[i1:i2]]
            continue
        out += [("-", line) for line in a[i1:i2]]
        out += [("+", line) for line in b[j1:j2]]
    return out


def three_way(base: Any, current: Any, proposed: Any):
    """Base, current and proposed as lines, each marked where it differs from base."""
    base_l, changed_in_base = json_lines(base), set()

    def against_base(value: Any) -> list[tuple[str, bool]]:
        lines = json_lines(value)
        marked = [False] * len(lines)
        matcher = difflib.SequenceMatcher(None, base_l, lines, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                changed_in_base.update(range(i1, i2))
                for j in range(j1, j2):
                    marked[j] = True
        return list(zip(lines, marked, strict=True))

    current_l = against_base(current)
    proposed_l = against_base(proposed)
    base_marked = [(line, i in changed_in_base) for i, line in enumerate(base_l)]
    return base_marked, current_l, proposed_l
