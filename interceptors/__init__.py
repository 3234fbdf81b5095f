"""Client and server interceptors, one module per concern, each covering all four arities."""
