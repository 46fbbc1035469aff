"""The model: the classifier head on cached embeddings, its training, and the
project's current head."""
