"""Issue #8 faults in the data path: nothing lost, nothing half-visible.

* disk full during PUT (a 4 MiB tmpfs as the storage root) → 507, no partial file, staging clean,
  and the space is back for the next upload;
* client disconnect mid-PUT → no file, no staging file (also tests/cases/test_b14_put_edges.py);
* storage root unreadable: the requests run with the effective uid of ``nobody`` against a root
  only root may enter (``chmod 000`` alone does not stop uid 0) → 503 "storage unavailable",
  never a 500 or a hang, and service resumes when access is back;
* storage root vanished (moved away, like an unmounted filesystem) → 503, nothing recreated;
* restart: staging files left by a crash are removed at start-up and never visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.integration.tpc_helpers import staging

RW = "storage.read:/ storage.create:/ storage.modify:/"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_put_is_507_and_leaves_nothing(make_gateway: Any, tmpfs: Path) -> None:
    gw: Gateway = await make_gateway(storage={"root": str(tmpfs), "io_chunk": 65536})
    gw.root = tmpfs
    h = gw.bearer(RW)
    r = await gw.client.put("/big", data=io.BytesIO(os.urandom(8 << 20)), headers=h)
    assert r.status == 507, await r.text()
    assert not (tmpfs / "big").exists() and staging(gw) == []

    async def chunks() -> Any:
        for _ in range(8):
            yield b"c" * (1 << 20)

    r = await gw.client.put("/chunked", data=chunks(), headers=h)
    assert r.status == 507
    assert not (tmpfs / "chunked").exists() and staging(gw) == []
    # replacing an existing file that does not fit keeps the old content intact
    (tmpfs / "keep").write_bytes(b"old")
    r = await gw.client.put("/keep", data=io.BytesIO(os.urandom(6 << 20)), headers=h)
    assert r.status == 507 and (tmpfs / "keep").read_bytes() == b"old"
    # space is back
    r = await gw.client.put("/small", data=b"s" * 100_000, headers=h)
    assert r.status == 201 and (tmpfs / "small").stat().st_size == 100_000
    assert sorted(p.name for p in tmpfs.iterdir()) == [".segate", "keep", "small"]


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


async def test_unreadable_root_is_503(gw: Gateway) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch the effective uid")
    (gw.root / "f").write_bytes(b"F")
    (gw.root / "dir").mkdir()
    h = gw.bearer(RW)
    assert (await gw.client.get("/f", headers=h)).status == 200  # token verified and cached
    mode = gw.root.stat().st_mode
    os.chmod(gw.root, 0o000)
    try:
        with as_nobody():
            reqs = [
                ("GET", "/f"),
                ("HEAD", "/f"),
                ("PUT", "/g"),
                ("PROPFIND", "/dir"),
                ("MKCOL", "/m"),
                ("DELETE", "/f"),
            ]
            for method, path in reqs:
                r = await asyncio.wait_for(
                    gw.client.request(
                        method,
                        path,
                        headers={**h, "Depth": "0"},
                        data=b"x" if method == "PUT" else None,
                    ),
                    10,
                )
                body = await r.text()
                assert r.status == 503, (method, path, r.status, body)
                assert "Traceback" not in body and str(gw.root) not in body
    finally:
        os.chmod(gw.root, mode)
    r = await gw.client.get("/f", headers=h)
    assert r.status == 200 and await r.read() == b"F"
    assert not (gw.root / "g").exists() and not (gw.root / "m").exists()


async def test_restart_removes_stale_staging_files(make_gateway: Any, tmp_path: Path) -> None:
    root = tmp_path / "persist"
    stale = root / ".segate" / "tmp"
    stale.mkdir(parents=True)
    (stale / "put-1234.part").write_bytes(b"half")
    (stale / "tpc-dir").mkdir()
    (stale / "tpc-dir" / "x").write_bytes(b"y")
    gw: Gateway = await make_gateway(storage={"root": str(root)})
    assert list(stale.iterdir()) == []
    r = await gw.client.request("PROPFIND", "/", headers={**gw.bearer(RW), "Depth": "1"})
    assert r.status == 207 and b".segate" not in await r.read()


async def test_vanished_root_is_503(make_gateway: Any, tmp_path: Path) -> None:
    """The storage root disappears (an unmounted filesystem): 503 for every verb, then back."""
    import shutil

    gw: Gateway = await make_gateway()
    (gw.root / "f").write_bytes(b"F")
    h = gw.bearer(RW)
    assert (await gw.client.get("/f", headers=h)).status == 200
    aside = tmp_path / "aside"
    shutil.move(str(gw.root), aside)
    try:
        for method in ("GET", "HEAD", "PUT", "PROPFIND", "MKCOL", "DELETE"):
            r = await gw.client.request(method, "/f", headers={**h, "Depth": "0"})
            assert r.status == 503, (method, r.status, await r.text())
        assert not gw.root.exists()  # nothing recreated it behind the admin's back
    finally:
        shutil.move(str(aside), gw.root)
    assert (await gw.client.get("/f", headers=h)).status == 200
