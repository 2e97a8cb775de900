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
    try:
        import tensorflow as tf
        found.append(Check("tensorflow", True, tf.__version__))
    except ImportError:
        found.append(Check("tensorflow", False, "not importable", "pip install 'tensorflow-cpu==2.21.*'"))
    found.append(Check("python venv", True, sys.version.split()[0]))
    from . import sandbox
    found.append(Check("model sandbox", sandbox.abi_version() > 0 and sandbox.mode() != "off", sandbox.status(),
                       None if sandbox.abi_version() else "a kernel with Landlock (Linux >= 5.13, lsm=...,landlock)"))
    for tool, pkg in (("ssh", "openssh-client"), ("adb", "adb")):
        path = shutil.which(tool)
        found.append(Check(tool, bool(path), path or "not found", None if path else f"apt-get install {pkg}"))
    try:
        from . import arm64
        found += [Check(c.name, c.ok, c.detail, c.fix) for c in arm64.doctor()]
    except ImportError:
        found.append(Check("arm64 emulation", False, "packager.arm64 unavailable"))
    return found
