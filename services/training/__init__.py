"""Training: candidates trained on a dataset version (a per-site re-scoring stage on the served detector's own
proposals), evaluated against the champion on the version's test split, written as model dirs with lineage."""
