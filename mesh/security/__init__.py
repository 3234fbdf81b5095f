"""Identity and mTLS: the mesh CA, per-instance certificates, TLS credentials, caller policy."""
