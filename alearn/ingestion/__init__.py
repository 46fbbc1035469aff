"""Ingest: find images (a folder or a manifest), decode and hash them, record them
in the store."""
