"""The ingest service: camera streams in, sampled JPEG frame events out."""
