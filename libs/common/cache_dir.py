"""Where Vigil keeps what it downloads and builds on a machine (assets, converted and trained models,
registry downloads): $VIGIL_CACHE_DIR, else ~/.cache/vigil."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIGIL_CACHE_DIR") or Path.home() / ".cache" / "vigil")
