"""The mesh's own contract: method and service options (`mesh.api.v1`) and how to read them.

`protos/mesh/api/v1/options.proto` is generated into `mesh/api/v1/` (by
`make protos`); `mesh.api.options` reads the options from descriptors.
"""
