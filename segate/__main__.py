"""The command line: serve, token, macaroon, check-config. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path

from segate import logsink
from segate.config import ConfigError, Settings, file_problems, load_settings, settings_from_dict
from segate.defaults import data_dir, prepare_default, state_dir
from segate.web.redact import install_log_filter

log = logging.getLogger("segate")


def _setup_logging(fmt: str, level: str) -> None:
    # per-record work no format below shows: getpid(), the current thread and process names,
    # and the stack walk that finds the caller's file and line (README "Performance")
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    logsink.install(fmt == "json", level)
    install_log_filter()  # aiohttp's parser errors: no traceback, no raw request bytes (B09)


def _settings_for(args: argparse.Namespace) -> tuple[Settings, bool]:
    if args.config:
        return load_settings(Path(args.config)), False
    state, data = state_dir(), data_dir()
    text, _pki, _dev = prepare_default(state, data)
    return settings_from_dict(tomllib.loads(text), state), True


def _banner(settings: Settings) -> str:
    state = state_dir()
    url = settings.server.base_url
    return (
        f"segate serving {settings.storage.root} on {url}/ (embedded default config)\n"
        f"  dev state (CA, host cert, issuer key): {state}\n"
        "  try:\n"
        f"    TOKEN=$(segate token --scope 'storage.read:/ storage.create:/')\n"
        f'    curl --cacert {state}/ca.pem -H "Authorization: Bearer $TOKEN" '
        f"-T README.md {url}/README.md\n"
        f'    curl --cacert {state}/ca.pem -H "Authorization: Bearer $TOKEN" {url}/README.md\n'
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings, is_default = _settings_for(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config error: {p}", file=sys.stderr)
        return 2
    fmt = args.log_format or settings.server.log_format
    _setup_logging(fmt, args.log_level)
    problems = file_problems(settings)
    if problems:
        for p in problems:
            print(f"config error: {p}", file=sys.stderr)
        return 2
    if is_default:
        print(_banner(settings), flush=True)
    from segate.web.app import StorageSetupError
    from segate.web.server import ListenError, run

    try:
        return run(settings)
    except (ListenError, StorageSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_token(args: argparse.Namespace) -> int:
    from segate.defaults import DEV_ISSUER
    from segate.devissuer import ensure_dev_issuer

    state = state_dir()
    if not (state / "issuer-es256.key").exists():
        # a new key here is one no running server trusts: say where it went and how to point
        # at the server's state folder instead of minting a useless token silently
        print(
            f"warning: no dev state in {state}; created a new dev issuer key there. A server "
            "started elsewhere will not accept this token: run `segate token` from the "
            "folder where `segate serve` runs, or set SEGATE_STATE to its state folder.",
            file=sys.stderr,
        )
    dev = ensure_dev_issuer(state, DEV_ISSUER)
    aud: str | list[str] = args.aud or "https://localhost:8443"
    if isinstance(aud, str) and " " in aud:
        aud = aud.split()
    groups = args.groups.replace(",", " ").split() if args.groups else None
    print(
        dev.mint(
            scope=args.scope,
            audience=aud,
            lifetime=args.lifetime,
            subject=args.sub,
            groups=groups,
        )
    )
    return 0


def cmd_macaroon(args: argparse.Namespace) -> int:
    """Mint an admin macaroon with the server's current secret (PROTOCOLS.md §3)."""
    import math
    import time

    from segate.auth.durations import DurationError, parse_duration
    from segate.auth.macaroon_caveats import (
        CaveatError,
        MintedFor,
        parse_activities,
        parse_networks,
    )
    from segate.auth.macaroons import MacaroonKeyring, mint
    from segate.paths import LogicalPath, PathError

    try:
        settings, _is_default = _settings_for(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config error: {p}", file=sys.stderr)
        return 2
    mac = settings.macaroons
    if mac.secret_file is None:
        print("config error: macaroons.secret_file is not set", file=sys.stderr)
        return 2
    try:
        if not args.path.startswith("/"):
            raise PathError("--path must be absolute")
        path = LogicalPath.from_plain(args.path)
        activities = parse_activities(args.activity)
        validity = parse_duration(args.validity)
        networks = [str(n) for n in parse_networks(args.ip)] if args.ip else []
        keyring = MacaroonKeyring.from_files(mac.secret_file, mac.previous_secret_files)
    except (PathError, CaveatError, DurationError, OSError) as exc:
        print(f"segate macaroon: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    print(
        mint(
            keyring,
            location=mac.location,
            minted_for=MintedFor.admin(args.subject),
            path=path,
            activities=activities,
            expires_at=math.floor(now + min(validity, mac.max_validity)),
            networks=networks,
        )
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.file))
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        print(f"{len(exc.problems)} problem(s) in {args.file}")
        return 1
    problems = file_problems(settings)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.file}")
        return 1
    summary = {
        "listen": settings.server.listen,
        "storage_root": str(settings.storage.root),
        "issuers": [i.issuer for i in settings.tokens.issuers],
        "rules": len(settings.rules),
        "workers": settings.server.workers,
    }
    print(f"{args.file}: OK {json.dumps(summary)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", "-c", help="TOML config; without it, the embedded default")
    s.add_argument("--log-format", choices=("text", "json"))
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="mint a token from the dev issuer of the embedded default")
    t.add_argument("--scope", default="storage.read:/")
    t.add_argument("--aud", help="audience (space-separated for several)")
    t.add_argument("--lifetime", type=int, default=3600, help="seconds")
    t.add_argument("--groups", help="wlcg.groups, comma or space separated")
    t.add_argument("--sub", default="dev-user")
    t.set_defaults(func=cmd_token)

    m = sub.add_parser("macaroon", help="mint an admin macaroon with the server's secret")
    m.add_argument("--config", "-c", help="TOML config; without it, the embedded default")
    m.add_argument("--path", required=True, help="absolute path the macaroon is limited to")
    m.add_argument("--activity", default="DOWNLOAD,LIST", help="comma list, e.g. DOWNLOAD,LIST")
    m.add_argument("--validity", default="PT1H", help="ISO 8601 duration (PT30M, PT2H, P1D)")
    m.add_argument("--ip", help="client addresses or CIDRs, comma separated")
    m.add_argument("--subject", default="segate-admin", help="name recorded in the macaroon")
    m.set_defaults(func=cmd_macaroon)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
