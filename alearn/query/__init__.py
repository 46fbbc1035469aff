"""Query: which unlabeled items people should label next (utilities, strategies, batch planning)."""
