"""Running the mesh on one machine: `meshctl up/down/status/demo` and `events tail`."""
