"""The payments service: a payment processor simulator with deterministic test cards."""
