"""The shop's tooling next to the shop: the demo story and the shop's own contract rules.

- `demo`: `meshctl demo` (named in mesh.toml) / `python -m services.tools.demo`.
- `contract_lint`: the mesh's contract lint plus the shop's rules (`make lint`).
"""
