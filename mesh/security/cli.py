"""`meshctl pki ...`: the mesh CA and identities from the command line.

meshctl pki init [NAME ...]     create the CA (unless there is one) and issue NAMEs
meshctl pki issue NAME          a new certificate for NAME (--dns/--ip add names)
meshctl pki rotate              re-issue every certificate in the directory
meshctl pki renew NAME ...      re-issue NAMEs' files when a third of their lifetime is
                                left, until stopped (`--once`: what is due now, then exit)
meshctl pki show [NAME]         identity, names, expiry of the CA and the certificates

The directory is MESH_PKI_DIR, else `<--run-dir>/pki` (`.run/pki`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from base.addresses import is_dns_name, is_ip_literal
from mesh.security.identity_files import IdentityFileRenewer, issue_identity
from mesh.security.pki import PkiError, check_identity, describe
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings, security_from_env


def security_for(run_dir: Path) -> SecuritySettings:
    """The security settings, the PKI directory under `run_dir` unless MESH_PKI_DIR names one."""
    security = security_from_env(os.environ)
    if not os.environ.get("MESH_PKI_DIR"):
        security = dataclasses.replace(security, pki_dir=str(run_dir / "pki"))
    return security


def _fmt_remaining(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "EXPIRED"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if seconds >= 60 else f"{seconds}s"  # short test lifetimes


def _show_one(label: str, path: Path) -> None:
    info = describe(path.read_bytes())
    print(f"{label}")
    print(f"  file      {path}")
    if info.is_ca:
        print(f"  subject   {info.subject}")
    else:
        print(f"  identity  {info.identity or '(none)'}")
        names = [*info.dns_names, *info.ip_addresses]
        print(f"  names     {', '.join(names) or '(none)'}")
    print(
        f"  expires   {info.not_after.isoformat(timespec='seconds')} "
        f"(in {_fmt_remaining(info.remaining())})"
    )


def cmd_pki(args: argparse.Namespace) -> int:
    security = security_for(Path(args.run_dir))
    store = PkiStore(security)
    try:
        if args.pki_command == "init":
            for name in args.names:  # a bad name refused before anything is written
                check_identity(name)
            created = store.init_ca()
            print(f"{'created' if created else 'kept'} the mesh CA {store.ca_cert_path}")
            made = store.ensure_service_secret()
            print(f"{'created' if made else 'kept'} the services' shared secret in {store.dir}")
            for name in args.names:
                issue_identity(store, name)
                print(f"issued {name}: {store.cert_path(name)}")
        elif args.pki_command == "issue":
            issue_identity(store, args.name, args.dns, args.ip)
            cert, key = store.cert_path(args.name), store.key_path(args.name)
            print(f"issued {args.name}: {cert} (key {key})")
        elif args.pki_command == "renew":
            return _renew(store, args.names, once=args.once)
        elif args.pki_command == "rotate":
            rotated = store.rotate()
            print(f"rotated {len(rotated)}: {', '.join(rotated) or '(no certificates)'}")
            print("running instances pick the new files up without a restart")
        else:
            print(f"trust domain {security.trust_domain}, directory {store.dir}")
            if not store.has_ca():
                print("no CA yet: `meshctl pki init`")
                return 1
            _show_one("CA", store.ca_cert_path)
            for name in [args.name] if args.name else store.names():
                if not store.cert_path(name).is_file():
                    print(f"no certificate for {name!r}", file=sys.stderr)
                    return 1
                _show_one(name, store.cert_path(name))
    except PkiError as exc:
        print(f"meshctl pki: {exc}", file=sys.stderr)
        return 1
    return 0


def _renew(store: PkiStore, names: Sequence[str], *, once: bool) -> int:
    """`meshctl pki renew`: for a program that reads its certificate from files and
    renews nothing itself (compose's Envoy); `meshctl up` runs the same renewer."""
    missing = [n for n in names if not store.cert_path(n).is_file()]
    if missing:
        print(f"meshctl pki: no certificate for {', '.join(missing)} in {store.dir}:"
              f" `meshctl pki issue NAME` first", file=sys.stderr)  # fmt: skip
        return 1
    renewer = IdentityFileRenewer(store, names)
    if once:
        nearest = renewer.renew_due()
        print(f"next renewal due {nearest.isoformat(timespec='seconds') if nearest else '-'}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(f"renewing {', '.join(names)} in {store.dir} when a third of their lifetime is left;"
          " Ctrl-C or SIGTERM stops", flush=True)  # fmt: skip

    async def watch() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # PID 1 in a container: no default
            loop.add_signal_handler(signum, stop.set)
        renewer.start()
        try:
            await stop.wait()
        finally:
            await renewer.close()

    asyncio.run(watch())
    return 0


def _dns(text: str) -> str:
    """`--dns`: a host name, refused by argparse otherwise (`'not a name'` was issued)."""
    if not is_dns_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lower-case DNS name")
    return text


def _ip(text: str) -> str:
    """`--ip`: an IP address (a ValueError's traceback before)."""
    if not is_ip_literal(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address")
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pki` to meshctl's commands."""
    pki = subparsers.add_parser("pki", help="mesh CA and service certificates")
    sub = pki.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init", help="create the CA (unless there is one), issue NAMEs")
    init.add_argument("names", nargs="*", metavar="NAME")
    issue = sub.add_parser("issue", help="a new certificate for a service")
    issue.add_argument("name", metavar="NAME")
    issue.add_argument("--dns", action="append", default=[], type=_dns, help="an extra DNS name")
    issue.add_argument("--ip", action="append", default=[], type=_ip, help="an extra IP address")
    sub.add_parser("rotate", help="re-issue every certificate in the directory")
    renew = sub.add_parser("renew", help="keep NAMEs' certificate files renewed")
    renew.add_argument("names", nargs="+", metavar="NAME")
    renew.add_argument("--once", action="store_true", help="renew what is due now, then exit")
    show = sub.add_parser("show", help="identities and expiry")
    show.add_argument("name", nargs="?", default="", metavar="NAME")
    pki.set_defaults(fn=cmd_pki)
