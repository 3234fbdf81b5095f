"""The mesh's own contract: method and service options (`meshproto.api.v1`) and how to read them.

`protos/meshproto/api/v1/options.proto` is generated into `meshproto/api/v1/` (by
`make protos`); `mesh.api.options` reads the options from descriptors.
"""
