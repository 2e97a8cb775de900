"""Where edgepack keeps what it caches: runtime environments, the arm64 root filesystem,
conversions and device runs. One function, so every stage agrees on the place."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGEPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgepack``, else ``~/.cache/edgepack``."""
    root = os.environ.get("EDGEPACK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgepack")
    return Path(root)


def env_dir() -> Path:
    """Where runtime environments (venvs, the arm64 root filesystem) live: ``$EDGEPACK_ENV_DIR``,
    else :func:`cache_dir`. They are immutable and keyed by content, so they may be shared where
    conversion and run caches are not (the test suite gives each test its own cache_dir)."""
    root = os.environ.get("EDGEPACK_ENV_DIR")
    return Path(root) if root else cache_dir()
