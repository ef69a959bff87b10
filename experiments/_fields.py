"""The ``name=value,...`` option the research drivers take for TrainConfig fields."""

from __future__ import annotations

import ast


def parse_fields(text: str, option: str = "--candidate") -> dict:
    """``a=1,b=x`` -> {"a": 1, "b": "x"} (values as Python literals, else strings)."""
    fields = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{option} takes name=value pairs separated by commas, got {item!r}")
        try:
            fields[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            fields[key.strip()] = value.strip()
    return fields
