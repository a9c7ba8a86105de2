"""PyYAML's errors as one printable line: its own text spans several lines and, for a character YAML
refuses (a `ReaderError`), has no line or column at all."""

from __future__ import annotations

import yaml


def problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return exc.reason
    return getattr(exc, "problem", None) or str(exc).split("\n")[0]


def location(exc: yaml.YAMLError, text: str) -> tuple[int, int] | None:
    """1-based (line, column) of the problem in `text`, when PyYAML knows where it is."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return mark.line + 1, mark.column + 1
    if isinstance(exc, yaml.reader.ReaderError):
        start = text.rfind("\n", 0, exc.position) + 1
        return text.count("\n", 0, exc.position) + 1, exc.position - start + 1
    return None


def describe(exc: yaml.YAMLError, text: str) -> str:
    where = location(exc, text)
    at = f" at line {where[0]}, column {where[1]}" if where else ""
    return f"YAML syntax error{at}: {problem(exc)}"
