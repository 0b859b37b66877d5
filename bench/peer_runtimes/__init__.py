"""Model runtimes for the peer servers of `python -m bench.peers` (MLServer, KServe). Each runs in the peer's own
venv with PYTHONPATH at the repo, so it calls Vigil's own YOLO detector: the same resize, graph and decode."""
