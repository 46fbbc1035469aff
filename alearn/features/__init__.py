"""Features: the timm backbone, its preprocessing, and embeddings cached on disk by content hash."""
