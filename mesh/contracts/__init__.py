"""Contract tooling: code generation, breaking-change checks and lint over protos."""
