"""The one X509/VOMS test PKI of a test session (testbed/pki.py), built on first use.

Built before ``tests/x509_forge.py`` takes its ``NOW``: VOMS ACs made by voms-proxy-fake start
when the PKI is built, so a ``NOW`` taken earlier (at collection) would see them as not yet
valid once a long session reaches the X509 tests.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from testbed.pki import TestPKI, build_test_pki

_PKI: TestPKI | None = None


def shared_grid_pki() -> TestPKI:
    global _PKI
    if _PKI is None:
        where = Path(tempfile.mkdtemp(prefix="segate-grid-pki-"))
        atexit.register(shutil.rmtree, where, True)
        _PKI = build_test_pki(where)
    return _PKI
