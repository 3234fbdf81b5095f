"""`meshctl pki ...`: the mesh CA and identities from the command line.

meshctl pki init [NAME ...]     create the CA (unless there is one) and issue NAMEs
meshctl pki issue NAME          a new certificate for NAME (--dns/--ip add names)
meshctl pki rotate              re-issue every certificate in the directory
meshctl pki show [NAME]         identity, names, expiry of the CA and the certificates

The directory is MESH_PKI_DIR, else `<--run-dir>/pki` (`.run/pki`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.api.options import EDGE
from mesh.security.pki import PkiError, describe
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings, security_from_env

# The edge's certificate also answers to the names a local browser, curl or grpcurl uses.
EDGE_LOCAL_DNS = ("localhost",)
EDGE_LOCAL_IPS = ("127.0.0.1",)


def security_for(run_dir: Path) -> SecuritySettings:
    """The security settings, the PKI directory under `run_dir` unless MESH_PKI_DIR names one."""
    security = security_from_env(os.environ)
    if not os.environ.get("MESH_PKI_DIR"):
        security = dataclasses.replace(security, pki_dir=str(run_dir / "pki"))
    return security


def ensure_identities(security: SecuritySettings, names: Sequence[str]) -> PkiStore:
    """The CA (created if missing) and a valid certificate for each of `names`.

    A certificate is (re)issued when missing, unreadable, or past two thirds of
    its lifetime. The edge's also carries localhost/127.0.0.1.
    """
    store = PkiStore(security)
    store.init_ca()
    now = dt.datetime.now(dt.UTC)
    for name in names:
        try:
            info = describe(store.load(name).cert_pem)
            fresh = info.remaining(now) > (info.not_after - info.not_before) / 3
        except PkiError:
            fresh = False
        if not fresh:
            _issue(store, name)
    return store


def _issue(store: PkiStore, name: str, dns: Sequence[str] = (), ips: Sequence[str] = ()) -> None:
    if name == EDGE:
        dns, ips = (*EDGE_LOCAL_DNS, *dns), (*EDGE_LOCAL_IPS, *ips)
    store.issue(name, extra_dns=dns, extra_ips=ips)


def _fmt_remaining(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "EXPIRED"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m"


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
            created = store.init_ca()
            print(f"{'created' if created else 'kept'} the mesh CA {store.ca_cert_path}")
            made = store.ensure_service_secret()
            print(f"{'created' if made else 'kept'} the services' shared secret in {store.dir}")
            for name in args.names:
                _issue(store, name)
                print(f"issued {name}: {store.cert_path(name)}")
        elif args.pki_command == "issue":
            _issue(store, args.name, args.dns, args.ip)
            cert, key = store.cert_path(args.name), store.key_path(args.name)
            print(f"issued {args.name}: {cert} (key {key})")
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pki` to meshctl's commands."""
    pki = subparsers.add_parser("pki", help="mesh CA and service certificates")
    sub = pki.add_subparsers(dest="pki_command", required=True)
    init = sub.add_parser("init", help="create the CA (unless there is one), issue NAMEs")
    init.add_argument("names", nargs="*", metavar="NAME")
    issue = sub.add_parser("issue", help="a new certificate for a service")
    issue.add_argument("name", metavar="NAME")
    issue.add_argument("--dns", action="append", default=[], help="an extra DNS name")
    issue.add_argument("--ip", action="append", default=[], help="an extra IP address")
    sub.add_parser("rotate", help="re-issue every certificate in the directory")
    show = sub.add_parser("show", help="identities and expiry")
    show.add_argument("name", nargs="?", default="", metavar="NAME")
    pki.set_defaults(fn=cmd_pki)
