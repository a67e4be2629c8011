"""A minimal TOML writer (``tomllib`` only reads) for configs of ``segate serve`` subprocesses.

Shared by the interop tests (tests/interop/conftest.py) and the benchmark (testbed/bench), which
both start the gateway with ``--config FILE``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str | Path):
        return _toml_str(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml_table(data: dict[str, Any], prefix: tuple[str, ...], out: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        name = (*prefix, k)
        dotted = ".".join(_toml_key(p) for p in name)
        if isinstance(v, dict):
            out.append(f"\n[{dotted}]")
            _toml_table(v, name, out)
        elif _is_table_array(v):
            for item in v:
                out.append(f"\n[[{dotted}]]")
                _toml_table(item, name, out)


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML for nested dicts, lists of dicts (``[[a.b]]``) and scalars / scalar lists."""
    out: list[str] = []
    _toml_table(data, (), out)
    return "\n".join(out).lstrip("\n") + "\n"


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
