"""Evidence about a run's settings, computed from its data (e.g. how wide the embedding buffer must be)."""
