"""`edgepack doctor`: what this host can do, and the command that fixes what is missing."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def checks() -> list[Check]:
    found = []
    # Installed distribution, not an import: importing TensorFlow takes seconds and prints banners.
    import importlib.util
    from importlib import metadata
    version = None
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    if version and importlib.util.find_spec("tensorflow") is not None:
        found.append(Check("tensorflow", True, version))
    else:
        found.append(Check("tensorflow", False, "not installed", "pip install 'tensorflow-cpu==2.21.*'"))
    found.append(Check("python venv", True, sys.version.split()[0]))
    for tool, pkg in (("ssh", "openssh-client"), ("adb", "adb")):
        path = shutil.which(tool)
        found.append(Check(tool, bool(path), path or "not found", None if path else f"apt-get install {pkg}"))
    try:
        from . import arm64
        found += [Check(c.name, c.ok, c.detail, c.fix) for c in arm64.doctor()]
    except ImportError:
        found.append(Check("arm64 emulation", False, "packager.arm64 unavailable"))
    return found
