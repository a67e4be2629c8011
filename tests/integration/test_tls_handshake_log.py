"""A refused client certificate leaves a line in the server log (it used to leave nothing:
asyncio and uvloop log TLS handshake errors only in debug mode).

The server side is segate's own TLS context (segate.web.tls) on a uvloop server with the fast
lane, as ``segate serve`` runs it; the clients present the test PKI's expired and untrusted
proxies, and a valid one for contrast.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
import uvloop

from segate.web.tls import server_ssl_context
from testbed.pki import TestPKI


class _Quiet(asyncio.Protocol):
    pass


def _client_context(pki: TestPKI, proxy: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(proxy))
    return ctx


async def _handshake(pki: TestPKI, proxy: Path) -> bool:
    server_ctx = server_ssl_context(pki.host_cert, pki.host_key, pki.ca_dir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Quiet, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=_client_context(pki, proxy), server_hostname="localhost"
            ),
            10,
        )
        # TLS 1.3: the server checks the client certificate after the client's handshake
        # ends; a refusal arrives as an alert on the first read
        try:
            data = await asyncio.wait_for(reader.read(1), 2)
            ok = data != b""
        except (ssl.SSLError, ConnectionError):
            ok = False
        except TimeoutError:
            ok = True  # nothing to read from a silent server: the session stands
        writer.close()
        return ok
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        server.close()
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("which", "reason"),
    [("proxy_expired", "certificate has expired"), ("proxy_untrusted", "unable to get")],
)
def test_refused_client_certificate_is_logged(
    grid_pki: TestPKI, caplog: pytest.LogCaptureFixture, which: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="segate")
    ok = uvloop.run(_handshake(grid_pki, getattr(grid_pki, which)))
    assert not ok
    lines = [r.getMessage() for r in caplog.records if r.name == "segate"]
    assert any("TLS handshake refused a client certificate" in m and reason in m for m in lines), (
        lines
    )


def test_good_client_certificate_logs_nothing(
    grid_pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="segate")
    assert uvloop.run(_handshake(grid_pki, grid_pki.proxies["plain"]))
    assert not [r for r in caplog.records if "TLS handshake" in r.getMessage()]
