"""What the Kubernetes renderer takes besides the topology.

Tracks are the traffic policy's subset keys (`MESH_TRACK`, the registry metadata
`track`): every service gets one Deployment per track. The active track runs the
topology's instance count; the others are rendered at zero replicas, ready to be
scaled up with a new image for a blue-green release (a Deployment at zero replicas
is not autoscaled: its HPA starts acting once it is scaled up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from base.addresses import is_dns_label, is_dns_name, is_ip_literal
from base.settings import default_of
from mesh.settings import SecuritySettings

# The Kubernetes version whose schemas the tests validate the manifests against.
KUBERNETES_VERSION = "1.31.0"
DEFAULT_TRACKS = ("blue", "green")
# The Dockerfile's unprivileged user.
MESH_UID = 10001
# Inside a container: where the mesh PKI Secret and the NATS seed Secret are mounted.
PKI_MOUNT = "/etc/shop-mesh/pki"
NATS_SEED_MOUNT = "/etc/shop-mesh/nats"
NATS_SEED_FILE = f"{NATS_SEED_MOUNT}/seed"
# A label every mesh workload's pods carry: the service identity their certificate
# names (spiffe://<trust domain>/svc/<identity>). NetworkPolicies select callers by it.
IDENTITY_LABEL = "shop-mesh/identity"
PART_OF = "shop-mesh"

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
# An image name, as the distribution's reference grammar has it: path components of
# lower-case letters and digits joined by '.', '_', '__' or dashes, separated by '/',
# after an optional registry host. Limit: as Docker reads a name, a first component is
# a host only with a '.' or a ':' or as `localhost` (the grammar also takes `UPPER` for one).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = (
    rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})+(?::[0-9]+)?|{_HOST_LABEL}:[0-9]+|localhost"
    r"|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?)"
)
_IMAGE = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")


class K8sOptionsError(ValueError):
    """An option the manifests cannot be rendered with; the message names it."""


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    cpu_limit: str = "1"
    memory_limit: str = "512Mi"

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


@dataclass(frozen=True, slots=True)
class K8sOptions:
    namespace: str = "shop-mesh"
    image: str = "shop-mesh"
    tag: str = "0.1.0"
    tracks: tuple[str, ...] = DEFAULT_TRACKS
    active_track: str = "blue"
    # Only these services' workload files (a release renders one service's green track).
    only_services: tuple[str, ...] = ()
    trust_domain: str = "mesh.local"
    envoy_image: str = "envoyproxy/envoy:v1.40.0"
    nats_image: str = "nats:2.10-alpine"
    nats_replicas: int = 3
    nats_storage: str = "10Gi"
    postgres_image: str = "postgres:16-alpine"
    postgres_storage: str = "10Gi"
    resources: Resources = Resources()
    # HPA: at most this many times the topology's instances, at this CPU utilisation.
    hpa_max_factor: int = 4
    hpa_cpu_percent: int = 70
    # The identities' certificates (cert-manager, mesh/k8s/certificates.py): lifetime,
    # and the names (DNS or IP) clients reach the edge's LoadBalancer by.
    cert_lifetime_s: float = default_of(SecuritySettings, "cert_lifetime_s")
    edge_names: tuple[str, ...] = ()

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.tag}"

    def check(self) -> None:
        if not is_dns_label(self.namespace):
            raise K8sOptionsError(f"--namespace: {self.namespace!r} is not a DNS label")
        if not _TAG.fullmatch(self.tag):
            raise K8sOptionsError(f"--tag: {self.tag!r} is not an image tag (and label value)")
        if not self.tracks:
            raise K8sOptionsError("--tracks: at least one track")
        for track in self.tracks:
            if not is_dns_label(track, max_len=20):
                raise K8sOptionsError(f"--tracks: {track!r} is not a short DNS label")
        if self.active_track not in self.tracks:
            raise K8sOptionsError(
                f"--active: {self.active_track!r} is not one of the tracks {list(self.tracks)}"
            )
        if self.nats_replicas not in (1, 3, 5):
            # An odd count for JetStream's RAFT quorum; also MESH_STREAM_REPLICAS.
            raise K8sOptionsError("nats_replicas: 1, 3 or 5")
        self._check_names()

    def _check_names(self) -> None:
        """The options rendered as names: a track given twice rendered every track's
        objects twice, an image or an edge name that is none went into the manifests
        (`--image UPPER/x`, `--edge-name ''` in the edge Certificate's dnsNames)."""
        if len(set(self.tracks)) != len(self.tracks):
            raise K8sOptionsError(f"--tracks: {','.join(self.tracks)} names a track twice")
        if len(self.image) > 255 or not _IMAGE.fullmatch(self.image):
            raise K8sOptionsError(
                f"--image: {self.image!r} is not an image name ([registry host[:port]/]"
                " lower-case path components joined by '/'; the tag is --tag)"
            )
        for name in self.edge_names:
            if not (is_dns_name(name) or is_ip_literal(name)):
                raise K8sOptionsError(
                    f"--edge-name: {name!r} is neither a lower-case DNS name nor an IP address"
                )
