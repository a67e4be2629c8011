"""Issue #8 load, the short CI version of ``python -m testbed.load`` (README "Load"): a real
``segate serve`` with two workers on loopback, 300 concurrent HTTPS connections mixing
authenticated GET/HEAD/PUT/PROPFIND and 10 concurrent pull TPCs for 20 s. Checks: no 5xx beyond
the configured limits, every uploaded and copied file's checksum, no staging file left, file
descriptors back, RSS back near its start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.load import run


@pytest.mark.load
async def test_short_load(tmp_path: Path) -> None:
    result = await run(20, 300, 10, tmp_path)
    print(json.dumps(result.summary, indent=1))
    assert result.failures == [], json.dumps(result.summary, indent=1)
    assert result.summary["uploads_checked"] > 100 and result.summary["copies_checked"] >= 10
