"""The bottom layer: domain errors, backoff and the settings machinery, imported by
interceptors, mesh and services.

It imports nothing of this project, so every layer above may depend on it.
"""
