"""Real processes on loopback for interop tests: the gateway (``segate serve``) and an issuer.

* :func:`start_segate` (fixture ``start_segate``; process code shared with the testbed in
  ``testbed/segate_proc.py``) writes a TOML config, picks a free loopback
  port (bind 0, release), takes TLS from ``segate.devpki.ensure_dev_pki``, runs
  ``python -m segate serve --config FILE`` with stdout/stderr in a log file, and waits until
  the port completes a TLS handshake. Teardown sends SIGTERM to that PID, waits, then SIGKILL.
* ``issuer``: a :class:`testbed.issuer.TestIssuer` over HTTPS on 127.0.0.1, running on its own
  event loop in a thread, because the tests block in ``subprocess.run`` while the gateway
  fetches discovery and JWKS from it. Its certificate comes from the same dev CA the gateway
  has as ``[server] ca_dir``, which outbound TLS trusts.
* :func:`need` fails (never skips) when a client binary is missing: ``testbed/test-all.sh``
  installs them all.

Loopback only; every process started here is stopped by PID; keys are generated at test time.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from segate.devpki import DevPKI, ensure_dev_pki
from testbed import segate_proc
from testbed.segate_proc import (  # re-exported: the interop tests import them from here
    ROOT,
    RunningSegate,
    free_port,
    stop_pid,
    tls_answers,
)
from testbed.tomlw import deep_merge, toml_dumps

__all__ = [
    "ROOT",
    "RunningSegate",
    "StartSegate",
    "ThreadedIssuer",
    "deep_merge",
    "free_port",
    "need",
    "start_segate_in",
    "stop_pid",
    "tls_answers",
    "toml_dumps",
]


# -- processes --------------------------------------------------------------------------------
def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed; run `bash testbed/test-all.sh` (it installs curl, "
            "davix, gfal2 and litmus), or apt-get install the package providing it",
            pytrace=False,
        )
    return path


def start_segate_in(
    workdir: Path, pki: DevPKI, config: dict[str, Any], *, name: str = "se"
) -> RunningSegate:
    """:func:`testbed.segate_proc.start_segate_in`, failing the test if it does not start."""
    try:
        return segate_proc.start_segate_in(workdir, pki, config, name=name)
    except segate_proc.SegateStartError as exc:
        pytest.fail(str(exc), pytrace=False)


StartSegate = Callable[..., RunningSegate]


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("devpki"))


@pytest.fixture(scope="module")
def start_segate(
    tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI
) -> Iterator[StartSegate]:
    """``start_segate(config, name="se") -> RunningSegate``; all are stopped after the module."""
    workdir = tmp_path_factory.mktemp("segate")
    running: list[RunningSegate] = []

    def start(config: dict[str, Any], *, name: str = "se") -> RunningSegate:
        se = start_segate_in(workdir, dev_pki, config, name=name)
        running.append(se)
        return se

    yield start
    for se in running:
        se.stop()


class ThreadedIssuer(segate_proc.ThreadedIssuer):
    """:class:`testbed.segate_proc.ThreadedIssuer` with its certificate from the dev PKI."""

    def __init__(self, pki: DevPKI) -> None:
        super().__init__(pki.host_cert, pki.host_key)


@pytest.fixture(scope="module")
def issuer(dev_pki: DevPKI) -> Iterator[ThreadedIssuer]:
    iss = ThreadedIssuer(dev_pki)
    try:
        yield iss
    finally:
        iss.close()
