"""Releases: blue-green and canary rollouts of a service with analysed traffic shifting."""
