"""The model registry, shared by the CLI (`vigil models`), the inference service (which follows it) and the
trainer: versions and manifests in the object store (store.py, manifest.py), the promotion history
(history.py) and the announcements of stage changes on vigil.models (announcements.py)."""
