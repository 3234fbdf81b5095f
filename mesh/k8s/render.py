"""`meshctl k8s render|secrets`: the files of `deploy/k8s/`, and the Secrets beside them.

    meshctl k8s render [--out DIR] [--tag TAG] [--namespace NS]
                       [--tracks blue,green] [--active blue] [--service NAME ...]
                       [--edge-name shop.example.com ...]
    meshctl k8s secrets [--material DIR] [--namespace NS]

`render` writes numbered files in apply order (`kubectl apply -f DIR` applies a
directory's files in name order) and `helm/consul-values.yaml`. With `--service` it
writes only those services' workload files: a release renders one service's green
track with the new tag (`--service orders --tracks green --active green --tag 1.1.0`).
The committed `deploy/k8s/` is `render` with the defaults; a test keeps it current.
Everything rendered is deterministic and holds no key material (Secrets come from
`secrets`, mesh/k8s/secrets.py, and the identities' from cert-manager,
mesh/k8s/certificates.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from base.settings import default_of
from mesh.api.options import EDGE
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import ROOT, project_output
from mesh.k8s.certificates import ISSUER, ISSUER_LIFETIME_DAYS, certificate_manifests
from mesh.k8s.edge import edge_manifests
from mesh.k8s.infra import CONSUL_IDENTITY, consul_values, nats_manifests, postgres_manifests
from mesh.k8s.network import network_policies
from mesh.k8s.objects import Manifest, dump, dump_all, metadata
from mesh.k8s.options import K8sOptions, K8sOptionsError
from mesh.k8s.secrets import write_secrets
from mesh.k8s.workloads import service_manifests
from mesh.local.topology import Topology, load_topology
from mesh.security.identity_files import renewal_due
from mesh.security.pki import PkiError, describe
from mesh.security.policy import load_rows
from mesh.settings import Settings

DEPLOY_DIR = ROOT / "deploy" / "k8s"
CONSUL_VALUES = Path("helm") / "consul-values.yaml"
HEADER = (
    "# Rendered from mesh.toml and the contracts by `meshctl k8s render` (mesh/k8s/).\n"
    "# Do not edit: change the topology, the protos or mesh/k8s/ and render again.\n"
)


def render_manifests(topology: Topology, options: K8sOptions) -> dict[Path, list[Manifest]]:
    """Every file of the output directory (relative path -> its documents), in apply
    order; only the selected services' workload files when `options.only_services`. The
    edge serves the topology's contracts and trusts its token issuer (`[edge]`)."""
    options.check()
    known = {s.name for s in topology.services}
    unknown = sorted(set(options.only_services) - known)
    if unknown:
        raise K8sOptionsError(f"--service: {unknown} not in {topology.path} ({sorted(known)})")
    with_nats = {i.name for i in topology.event_identities()}
    files: dict[Path, list[Manifest]] = {}
    if not options.only_services:
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {k: v for k, v in metadata(options.namespace, options).items()
                         if k != "namespace"},
        }  # fmt: skip
        files[Path("00-namespace.yaml")] = [namespace]
        identities = [*(s.name for s in topology.services), EDGE, CONSUL_IDENTITY]
        files[Path("05-certificates.yaml")] = certificate_manifests(identities, options, EDGE)
        files[Path("10-nats.yaml")] = nats_manifests(options)
        files[Path("20-postgres.yaml")] = [
            m for s in topology.services for m in postgres_manifests(s, options)
        ]
    for spec in topology.services:
        if options.only_services and spec.name not in options.only_services:
            continue
        files[Path(f"30-{spec.name}.yaml")] = service_manifests(
            spec, options, nats=spec.name in with_nats
        )
    if not options.only_services:
        descriptors = topology.edge_descriptors()
        files[Path("40-edge.yaml")] = edge_manifests(
            options, descriptors, topology.edge.auth, topology.edge.cors
        )
        model = build_model(load_descriptor_set(descriptors).file)
        files[Path("50-network-policies.yaml")] = network_policies(
            topology.services, load_rows(descriptors), model, options, topology.edge.auth
        )
    return files


def write_manifests(out: Path, files: dict[Path, list[Manifest]], options: K8sOptions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for rel, docs in files.items():
        body = dump_all(docs)
        (out / rel).write_text(HEADER + body)
    if not options.only_services:
        (out / CONSUL_VALUES).parent.mkdir(exist_ok=True)
        body = dump(consul_values(options))
        (out / CONSUL_VALUES).write_text(
            HEADER + "# helm install consul hashicorp/consul -n <namespace> -f this file\n" + body
        )
        # Files a previous render wrote for a service the topology no longer has.
        for old in out.glob("[0-9][0-9]-*.yaml"):
            if old.relative_to(out) not in files and old.read_text().startswith(HEADER):
                old.unlink()


def _options(args: argparse.Namespace) -> K8sOptions:
    base = K8sOptions()
    tracks = tuple(t.strip() for t in args.tracks.split(",") if t.strip()) if args.tracks else None
    return replace(
        base,
        namespace=args.namespace or base.namespace,
        tag=args.tag or base.tag,
        image=args.image or base.image,
        tracks=tracks or base.tracks,
        active_track=args.active or (tracks[0] if tracks else base.active_track),
        only_services=tuple(args.service or ()),
        edge_names=tuple(args.edge_name or ()),
    )


def cmd_render(args: argparse.Namespace) -> int:
    topology = load_topology(Path(args.topology))
    try:
        options = _options(args)
        files = render_manifests(topology, options)
    except K8sOptionsError as exc:
        print(f"meshctl k8s render: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else project_output(topology.root, DEPLOY_DIR)
    write_manifests(out, files, options)
    print(f"rendered {len(files)} manifest file(s) into {out}")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    if args.edge_name:
        print(
            "meshctl k8s secrets: --edge-name is an option of `meshctl k8s render` now (the"
            " edge's certificate is cert-manager's, from the rendered Certificate)",
            file=sys.stderr,
        )
        return 2
    topology = load_topology(Path(args.topology))
    options = replace(K8sOptions(), namespace=args.namespace or K8sOptions().namespace)
    try:
        options.check()
    except K8sOptionsError as exc:
        print(f"meshctl k8s secrets: {exc}", file=sys.stderr)
        return 2
    material = Path(args.material) if args.material else Path(args.run_dir) / "k8s"
    try:
        path = write_secrets(
            topology.services,
            topology.event_identities(),
            # The services' stream limits: the default settings', as the pods run them.
            topology.streams(
                max_bytes=default_of(Settings, "stream_max_bytes"),
                max_msgs=default_of(Settings, "stream_max_msgs"),
            ),
            options,
            material,
        )
    except PkiError as exc:
        print(
            f"meshctl k8s secrets: {exc}; move {material / 'pki'} away to make a new root"
            " (every pod then needs certificates of it: `cmctl renew --all`)",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {path} (key material: keep it out of git; `kubectl apply -f {path}`)")
    issuer = describe((material / "issuer" / "issuer.crt").read_bytes())
    due = renewal_due(issuer, dt.timedelta(days=ISSUER_LIFETIME_DAYS))
    print(
        f"{ISSUER}: the intermediate cert-manager signs with is valid until"
        f" {issuer.not_after:%Y-%m-%d}; run this and apply again before {due:%Y-%m-%d}"
    )
    return 0


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add `k8s render|secrets` to meshctl's commands (`common`: the options every
    subcommand accepts after its name too, `--topology` and `--run-dir`)."""
    k8s = subparsers.add_parser("k8s", help="Kubernetes manifests from the topology")
    sub = k8s.add_subparsers(dest="k8s_command", required=True, metavar="<k8s command>")
    render = sub.add_parser("render", help="write deploy/k8s/ (or --out DIR)", parents=[common])
    render.add_argument(
        "--out", default="", help="output directory (default: the topology's deploy/k8s)"
    )
    render.add_argument("--tag", default="", help="image tag, also MESH_VERSION (default 0.1.0)")
    render.add_argument("--image", default="", help="image name (default shop-mesh)")
    render.add_argument("--namespace", default="", help="namespace (default shop-mesh)")
    render.add_argument("--tracks", default="", help="comma-separated (default blue,green)")
    render.add_argument(
        "--active", default="", help="the track that runs the instances (default: the first)"
    )
    render.add_argument(
        "--service", action="append", help="only this service's workloads (repeatable)"
    )
    render.add_argument(
        "--edge-name",
        action="append",
        help="a DNS name or IP clients reach the edge by (repeatable; in its certificate)",
    )
    render.set_defaults(fn=cmd_render)
    secrets = sub.add_parser(
        "secrets", help="Secrets with key material (never commit them)", parents=[common]
    )
    secrets.add_argument("--material", default="", help="directory (default <run-dir>/k8s)")
    secrets.add_argument("--namespace", default="", help="namespace (default shop-mesh)")
    # Until 7 Dec 2026 the edge's names went here: say where they go now.
    secrets.add_argument("--edge-name", action="append", help=argparse.SUPPRESS)
    secrets.set_defaults(fn=cmd_secrets)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mesh.k8s.render`: re-render the committed copy (as `make protos` may)."""
    parser = argparse.ArgumentParser(description="render deploy/k8s/ from mesh.toml")
    parser.add_argument("--out", default="")
    parser.add_argument("--topology", default=str(ROOT / "mesh.toml"))
    args = parser.parse_args(argv)
    args.tag = args.image = args.namespace = args.tracks = args.active = ""
    args.service = args.edge_name = None
    return cmd_render(args)


if __name__ == "__main__":
    raise SystemExit(main())
