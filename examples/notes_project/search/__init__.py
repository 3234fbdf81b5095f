"""The search service of the example project (`examples/notes_project/mesh.toml`)."""
