"""Kubernetes manifests rendered from the project's topology (`meshctl k8s render`).

The mesh knows no application here either: the services, their ports and
instances come from `mesh.toml` (mesh/local/topology.py), the NetworkPolicies
from the contracts' caller policy (mesh/security/policy.py), the edge's Envoy
config from the same renderer as `envoy/envoy.yaml` (mesh/edge/), and NATS's
permissions from the topology's event identities. Modules:

- `options`: what the renderer takes besides the topology (namespace, image, tracks);
- `objects`: small builders shared by the others (metadata, probes, security contexts);
- `workloads`: per service a Deployment per track, Service, PDB, HPA;
- `edge`: the Envoy edge and its companion (`meshctl edge serve`), ConfigMap included;
- `infra`: NATS (3-node JetStream cluster), PostgreSQL per service, Consul's Helm values;
- `network`: NetworkPolicies mirroring the caller policy;
- `certificates`: the identities' certificates, issued and renewed by cert-manager
  from an intermediate of the mesh's root;
- `secrets`: Secrets with key material (that intermediate, NATS nkeys, database
  passwords), written only outside the repository by `meshctl k8s secrets`;
- `render`: the files of `deploy/k8s/` and the `meshctl k8s` commands.

Limits: rendered and validated offline against the Kubernetes JSON schemas only; no
cluster was available where this was written, so nothing here has been applied.
"""
