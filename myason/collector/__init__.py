"""The collector: UDP ingest, decryption and validation, spools, writers."""
