"""Expected failures (``testbed/expected.toml``) and how results are judged against them.

Every entry names the cells (``src dst mode cred size client``, each an fnmatch pattern or a list of
them, missing = any)
or conformance results (``peer case``) it covers, and must give a ``reason``. An outcome is
``pass``, ``fail`` (unexpected: makes the run exit non-zero), ``xfail`` (failed as listed, with
the reason) or ``xpass`` (listed but passed: worth a look, not an error).
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).with_name("expected.toml")
CELL_KEYS = ("src", "dst", "mode", "cred", "size", "client")
CASE_KEYS = ("peer", "case")


@dataclass(frozen=True, slots=True)
class Entry:
    pattern: dict[str, tuple[str, ...]]
    reason: str

    def covers(self, item: dict[str, Any]) -> bool:
        return all(
            any(fnmatch.fnmatchcase(str(item[k]), p) for p in pats)
            for k, pats in self.pattern.items()
        )


@dataclass(frozen=True, slots=True)
class Expected:
    matrix: tuple[Entry, ...]
    conformance: tuple[Entry, ...]

    @classmethod
    def load(cls, path: Path = DEFAULT) -> Expected:
        data = tomllib.loads(path.read_text())
        return cls(
            matrix=_entries(data.get("matrix", []), CELL_KEYS, "matrix"),
            conformance=_entries(data.get("conformance", []), CASE_KEYS, "conformance"),
        )

    def judge_cell(self, item: dict[str, Any]) -> None:
        _judge(item, self.matrix)

    def judge_case(self, item: dict[str, Any]) -> None:
        _judge(item, self.conformance)


def _entries(raw: list[Any], keys: tuple[str, ...], section: str) -> tuple[Entry, ...]:
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or not str(e.get("reason", "")).strip():
            raise ValueError(f"expected.toml {section}[{i}]: every entry needs a reason")
        unknown = set(e) - {*keys, "reason"}
        if unknown:
            raise ValueError(f"expected.toml {section}[{i}]: unknown keys {sorted(unknown)}")
        pattern = {k: _patterns(e[k]) for k in keys if k in e}
        out.append(Entry(pattern, " ".join(str(e["reason"]).split())))
    return tuple(out)


def _patterns(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list) else (str(v),)


def _judge(item: dict[str, Any], entries: tuple[Entry, ...]) -> None:
    entry = next((e for e in entries if e.covers(item)), None)
    item["expected"] = "fail" if entry else "pass"
    item["reason"] = entry.reason if entry else ""
    if item["ok"]:
        item["outcome"] = "xpass" if entry else "pass"
    else:
        item["outcome"] = "xfail" if entry else "fail"
