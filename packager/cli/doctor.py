"""`edgepack doctor`: what this host can do, and the command that fixes what is missing."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One line of `edgepack doctor`: ``name``, ``ok``, ``detail`` (version, path, or what is wrong), ``fix`` (the
    command that fixes it, or None) and ``required`` (build/verify cannot work without it)."""
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = False          # build/verify cannot work without it (doctor exits 5)


def _profile_checks(transports) -> list[Check]:
    """The data edgepack reads (recipes, runtimes, target profiles): each parses, and every target's
    deploy method is a registered transport."""
    from ..errors import UsageError
    from ..recipes import list_recipes
    from ..targets import list_targets
    found = []
    try:
        found.append(Check("recipes", True, f"{len(list_recipes())}: " + ", ".join(list_recipes()), required=True))
    except UsageError as exc:
        found.append(Check("recipes", False, exc.message, exc.hint, required=True))
    try:
        targets = list_targets()
    except UsageError as exc:
        return found + [Check("target profiles", False, exc.message, exc.hint, required=True)]
    wrong = [f"{t.source}: deploy {t.deploy!r} is not one of {', '.join(transports)}"
             for t in targets.values() if t.deploy not in transports]
    found.append(Check("target profiles", not wrong, "; ".join(wrong) or f"{len(targets)}: " + ", ".join(sorted(targets)),
                       "fix the profile's deploy method" if wrong else None, required=True))
    return found


def checks() -> list[Check]:
    """Every check of this host: TensorFlow and python venv (required), recipes and target profiles (required), the
    Landlock model sandbox, each transport's
    host program (ssh, adb) and arm64 emulation (:func:`packager.verification.arm64.doctor`). TensorFlow is looked up as an
    installed distribution, never imported."""
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
        found.append(Check("tensorflow", True, version, required=True))
    else:
        found.append(Check("tensorflow", False, "not installed", "pip install 'tensorflow-cpu==2.21.*'", required=True))
    venv = importlib.util.find_spec("venv") is not None and importlib.util.find_spec("ensurepip") is not None
    found.append(Check("python venv", venv, sys.version.split()[0] + ("" if venv else ": no venv/ensurepip module"),
                       None if venv else "apt-get install python3-venv", required=True))
    from ..contain import sandbox
    confined = sandbox.abi_version() > 0 and sandbox.mode() != "off"
    found.append(Check("model sandbox", confined, sandbox.status() + ("" if confined else
                       ": models load unconfined (their code can read and write anything you can); every build "
                       "says so, and --trust-model needs EDGEPACK_SANDBOX=0"),
                       None if sandbox.abi_version() else "a kernel with Landlock (Linux >= 5.13, lsm=...,landlock)"))
    found.append(Check("socket filter", sandbox.sockets_deniable(), "seccomp (libseccomp) refuses every socket to a "
                       "loaded model" if sandbox.sockets_deniable() else "no libseccomp: a loaded model may open sockets",
                       None if sandbox.sockets_deniable() else "apt-get install libseccomp2; pip install pyseccomp"))
    from ..deploy.transports import TRANSPORTS
    found += _profile_checks(TRANSPORTS)
    for tool, cls in {c.tool: c for c in TRANSPORTS.values()}.items():     # each transport's host program, once
        path = shutil.which(tool)
        found.append(Check(tool, bool(path), path or "not found", None if path else f"apt-get install {cls.tool_package}"))
    try:
        from ..verification import arm64
        found += [Check(c.name, c.ok, c.detail, c.fix) for c in arm64.doctor()]
    except ImportError:
        found.append(Check("arm64 emulation", False, "packager.verification.arm64 unavailable"))
    return found
