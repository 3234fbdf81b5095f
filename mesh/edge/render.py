"""Render the checked-in edge config (`envoy/`) from the descriptor set.

`envoy/envoy.yaml` is the compose topology's config (paths under /etc/envoy,
the edge meta server at `edge:9190`); `meshctl up` renders the same config
with local paths at run time. Both come from `render_files`.
"""

from __future__ import annotations

import argparse
import importlib.resources
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from mesh.edge.admin import socket_in
from mesh.edge.envoy_config import EdgeOptions, edge_descriptor_set, render, sds_document
from mesh.edge.model import build_model, load_descriptor_set

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "envoy"
DESCRIPTORS = ENVOY_DIR / "descriptors.binpb"
EDGE_DESCRIPTORS_NAME = "edge_descriptors.binpb"
SDS_NAME = "edge_sds.yaml"

COMPOSE_OPTIONS = EdgeOptions(
    descriptor_path="/etc/envoy/descriptors.binpb",
    edge_descriptor_path=f"/etc/envoy/{EDGE_DESCRIPTORS_NAME}",
    eds_dir="/var/run/envoy/eds",
    listen_address="0.0.0.0",
    # Inside its container: 127.0.0.1 would refuse the published 9901. The
    # compose file publishes it on the host's loopback only.
    admin_address="0.0.0.0",
    meta_address="edge-meta",
    cert_published=True,  # the `pki` volume is a PkiStore's (`pki-init`, `pki-renew`)
)

HEADER = (
    "# Rendered from the contracts by `meshctl edge render` (also run by `make protos`).\n"
    "# Do not edit: change protos/ or mesh/edge/ and render again.\n"
)


def project_output(project_dir: Path, checkout_default: Path) -> Path:
    """Where a render writes without `--out`: `checkout_default` (a directory of this
    checkout, `envoy/` or `deploy/k8s/`) at the same place in the topology's project
    directory, so another project's mesh.toml never writes over this checkout's
    committed files (`k8s render` replaced the shop's deploy/k8s/ until 7 Dec 2026;
    `edge render` and `k8s render` share this rule). For the shop's own mesh.toml it is
    `checkout_default` itself."""
    return project_dir / checkout_default.relative_to(ROOT)


def descriptor_source(ref: str | Path) -> Path:
    """The descriptor set a reference names: a file path, or `package:resource` for one
    shipped as package data (`shop:descriptors.binpb`), found through the installed
    package rather than a checkout (the package is located, not imported as code the
    mesh depends on: the reference is data, like mesh.toml's)."""
    text = str(ref)
    package, sep, resource = text.partition(":")
    if not sep or "/" in package or not package:
        return Path(text)
    try:
        found = importlib.resources.files(package).joinpath(resource)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(f"descriptor set {text}: no package {package!r}") from exc
    if not found.is_file():
        raise FileNotFoundError(f"descriptor set {text}: {package} ships no {resource}")
    return Path(str(found))


def render_files(
    out_dir: Path, options: EdgeOptions, descriptors: Path = DESCRIPTORS
) -> tuple[Path, Path]:
    """Write envoy.yaml and the edge descriptor set into out_dir; return their paths."""
    fds = load_descriptor_set(descriptors)
    model = build_model(fds.file)
    out_dir.mkdir(parents=True, exist_ok=True)
    edge_desc = out_dir / EDGE_DESCRIPTORS_NAME
    edge_desc.write_bytes(edge_descriptor_set(fds, model).SerializeToString(deterministic=True))
    config = out_dir / "envoy.yaml"
    body = yaml.safe_dump(render(model, options), sort_keys=False, width=120)
    config.write_text(HEADER + body)
    if options.tls:
        sds = yaml.safe_dump(sds_document(options), sort_keys=False, width=120)
        (out_dir / SDS_NAME).write_text(HEADER + sds)
    return config, edge_desc


def local_options(run_dir: Path, **overrides: object) -> EdgeOptions:
    """Options for a local edge whose files live under run_dir.

    Its admin is the Unix socket `socket_in(run_dir)`, `<run_dir>/admin.sock` unless that
    path is too long for a socket (mesh/edge/admin.py: on a shared machine, loopback TCP
    would let any account stop or re-route the edge).
    The PKI files default to `<run_dir>/../pki` (`meshctl up`'s layout: edge/ and
    pki/ side by side in the run dir); tests pass their own paths.
    """
    pki = run_dir.parent / "pki"
    return replace(
        EdgeOptions(
            descriptor_path=str(DESCRIPTORS),
            edge_descriptor_path=str(run_dir / EDGE_DESCRIPTORS_NAME),
            eds_dir=str(run_dir / "eds"),
            listen_address="127.0.0.1",
            meta_address="127.0.0.1",
            ca_cert_path=str(pki / "ca.crt"),
            cert_path=str(pki / "edge.crt"),
            key_path=str(pki / "edge.key"),
            cert_published=True,
            sds_path=str(run_dir / SDS_NAME),
            admin_socket=str(socket_in(run_dir)),
        ),
        **overrides,  # type: ignore[arg-type]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render envoy/ from the descriptor set")
    parser.add_argument("--out", type=Path, default=ENVOY_DIR)
    args = parser.parse_args(argv)
    config, _ = render_files(args.out, COMPOSE_OPTIONS)
    print(f"rendered {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
