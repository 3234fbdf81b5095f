"""The bottom layer: domain errors and backoff, imported by interceptors, mesh and services.

It imports nothing of this project, so every layer above may depend on it.
"""
