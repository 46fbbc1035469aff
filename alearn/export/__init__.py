"""Export: the finished dataset on disk, with provenance, splits, resizing, balance and a card."""
