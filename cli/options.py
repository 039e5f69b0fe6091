"""Small click helpers shared by the sub-commands."""

from __future__ import annotations

import json
from typing import Any

import click


def parse_key_values(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``("hop_ms=100", "x=a")`` -> ``{"hop_ms": 100, "x": "a"}`` (JSON values where they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint=flag)
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))
