"""The exact wheels of every runtime environment: ``packager/runtimes.lock.json``.

A runtime of ``packager/runtimes.toml`` names ranges (``ai-edge-litert==2.3.*``, ``numpy>=1.23,<3``). The lock
resolves them once, per Python version and CPU architecture (``arm64``: manylinux aarch64, the device and the
arm64 emulator; ``x86_64``: the host emulator), to exact distributions: name, version, wheel file name, sha256
and platform tag of the runtime and of every dependency. The emulator installs exactly those wheels
(``pip install --require-hashes --only-binary :all: --no-deps``), the bundle's manifest lists them and its
requirements files carry their hashes, and ``deploy --install`` installs exactly them on the device.

Regenerate it (needs the package index; nothing at run time downloads the lock)::

    python -m packager.runtime_lock            # writes packager/runtimes.lock.json
    python -m packager.runtime_lock --check    # exit 1 when runtimes.toml changed since the lock was made

It runs ``pip install --dry-run --report`` for each runtime x Python x architecture against
https://pypi.org/simple (``--isolated``: no pip configuration of this machine), with ``--only-binary :all:
--platform manylinux..._ARCH --python-version X.Y --implementation cp --abi cpXY``; the arm64 resolution
comes first and the x86_64 one is constrained to the same versions. The sha256 of each wheel is the
index's (pip checks every downloaded file against it).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

LOCK_FILE = Path(__file__).with_name("runtimes.lock.json")
FORMAT = 1
INDEX = "https://pypi.org/simple"
#: Python versions locked for every runtime (those in its ``python`` range): the targets' device Pythons and
#: every Python the host emulator may run under.
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: CPU architectures as target profiles name them -> wheel platform machine.
MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
#: Highest glibc a locked wheel may need: Debian bookworm's (Raspberry Pi OS, the arm64 emulator's root).
GLIBC_MINOR = 36
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def platform_tags(arch: str) -> list[str]:
    """The manylinux platform tags a wheel of ``arch`` may carry to be locked (glibc 2.17 .. 2.36)."""
    machine = MACHINES[arch]
    return [f"manylinux2014_{machine}"] + [f"manylinux_2_{m}_{machine}" for m in range(17, GLIBC_MINOR + 1)]


@lru_cache(maxsize=1)
def load() -> dict:
    """The lock file's JSON (read once); an empty lock when the file is missing."""
    try:
        return json.loads(LOCK_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": FORMAT, "runtimes": {}}


def wheels(runtime, python: str, arch: str) -> tuple[dict, ...] | None:
    """The locked wheels of ``runtime`` (a RuntimeProfile) for CPython ``python`` (``3.11``) on ``arch``
    (``arm64``/``x86_64``): dicts with name, version, filename, sha256, platform. None when the lock has no
    entry: a runtime declared only in a target profile, requirements that differ from the locked ones, or a
    Python/architecture the lock does not cover."""
    entry = load().get("runtimes", {}).get(runtime.name)
    if not entry or list(entry.get("requirements", [])) != list(runtime.requirements):
        return None
    found = entry.get("environments", {}).get(str(python), {}).get(arch)
    return tuple(found) if found else None


def covered(runtime) -> list[tuple[str, str]]:
    """(python, arch) pairs the lock has wheels for ``runtime`` (for messages)."""
    entry = load().get("runtimes", {}).get(runtime.name) or {}
    if list(entry.get("requirements", [])) != list(runtime.requirements):
        return []
    return [(py, arch) for py, by_arch in entry.get("environments", {}).items() for arch in by_arch]


def requirement_lines(wheel_sets) -> list[str]:
    """``name==version --hash=sha256:...`` lines for the wheels of several locked sets (e.g. one per
    architecture): one line per (name, version) listing every hash, so pip accepts whichever wheel fits the
    machine and nothing else. Sorted by name."""
    hashes: dict[tuple[str, str], list[str]] = {}
    for wheel_set in wheel_sets:
        for w in wheel_set or ():
            got = hashes.setdefault((w["name"], w["version"]), [])
            if w["sha256"] not in got:
                got.append(w["sha256"])
    return [f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in sorted(shas))
            for (name, version), shas in sorted(hashes.items(), key=lambda kv: kv[0][0].lower())]


def key(wheel_set) -> list[str]:
    """What identifies an environment built from ``wheel_set``: its sorted sha256s (a cache key part)."""
    return sorted(w["sha256"] for w in wheel_set or ())


def problems(lock: dict | None = None) -> list[str]:
    """What is wrong with the lock: a runtime of the registry, or a Python/architecture it needs, missing; a
    malformed wheel entry. Empty when consistent with ``packager/runtimes.toml``."""
    from .targets import list_runtimes, list_targets
    lock = load() if lock is None else lock
    out = []
    if lock.get("format") != FORMAT:
        out.append(f"format {lock.get('format')!r}, not {FORMAT}")
    for rt in list_runtimes().values():
        entry = lock.get("runtimes", {}).get(rt.name)
        if not entry:
            out.append(f"{rt.name}: not locked")
            continue
        if list(entry.get("requirements", [])) != list(rt.requirements):
            out.append(f"{rt.name}: locked for {entry.get('requirements')}, runtimes.toml says {list(rt.requirements)}")
            continue
        needed = {(py, arch) for py in pythons_for(rt) for arch in MACHINES}
        needed |= {(t.python, t.arch) for t in list_targets().values()
                   for r in t.runtimes if r.name == rt.name and r.requirements == rt.requirements}
        for py, arch in sorted(needed):
            found = entry.get("environments", {}).get(py, {}).get(arch)
            if not found:
                out.append(f"{rt.name}: no wheels for Python {py} on {arch}")
                continue
            names = {w.get("name", "").lower().replace("_", "-") for w in found}
            if rt.name not in names:
                out.append(f"{rt.name}: Python {py} on {arch} lacks the runtime's own wheel")
            for w in found:
                bad = [k for k in ("name", "version", "filename", "platform") if not isinstance(w.get(k), str) or not w[k]]
                if bad or not _SHA256.match(str(w.get("sha256", ""))) or not str(w.get("filename")).endswith(".whl"):
                    out.append(f"{rt.name}: Python {py} on {arch}: malformed wheel entry {w}")
                elif not (w["platform"] == "any" or MACHINES[arch] in w["platform"]):
                    out.append(f"{rt.name}: Python {py} on {arch}: {w['filename']} is not for {arch}")
    return out


def pythons_for(runtime) -> list[str]:
    """The Python versions of :data:`PYTHONS` in ``runtime``'s range."""
    from packaging.specifiers import SpecifierSet
    spec = SpecifierSet(runtime.python or "")
    return [py for py in PYTHONS if spec.contains(py + ".0")]


# --------------------------------------------------------------------------- generating
def _resolve(requirements: list[str], python: str, arch: str, constraints: list[str] | None = None) -> list[dict]:
    import os
    import subprocess
    import sys
    import tempfile
    nodot = python.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="edgepack-lock-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--no-input",
               "--index-url", INDEX, "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--only-binary", ":all:", "--target", str(Path(tmp) / "target"), "--implementation", "cp",
               "--python-version", python, "--abi", f"cp{nodot}"]
        for tag in platform_tags(arch):
            cmd += ["--platform", tag]
        if constraints:
            (Path(tmp) / "constraints.txt").write_text("\n".join(constraints) + "\n")
            cmd += ["--constraint", str(Path(tmp) / "constraints.txt")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        proc = subprocess.run(cmd + list(requirements), capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"pip cannot resolve {requirements} for Python {python} on {arch}: "
                               + (proc.stderr.strip().splitlines() or ["no output"])[-1])
        data = json.loads(report.read_text())
    found = []
    for item in data["install"]:
        info = item["download_info"]
        filename = info["url"].rsplit("/", 1)[-1]
        sha = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
        if not sha or not filename.endswith(".whl"):
            raise RuntimeError(f"{filename}: the index gave no sha256, or it is not a wheel")
        found.append({"name": item["metadata"]["name"], "version": item["metadata"]["version"],
                      "filename": filename, "sha256": sha, "platform": filename[:-4].rsplit("-", 1)[-1]})
    return sorted(found, key=lambda w: w["name"].lower())


def generate(progress=print) -> dict:
    """Resolve every runtime of ``packager/runtimes.toml`` for each of its Pythons and both architectures
    (needs the package index) and return the lock's JSON."""
    import time
    from .targets import list_runtimes
    lock = {"_comment": "Generated by `python -m packager.runtime_lock` (see its docstring and README.md, "
                        "'Runtime lock'); do not edit by hand.",
            "format": FORMAT, "index": INDEX, "generated": time.strftime("%Y-%m-%d", time.gmtime()),
            "glibc_max": f"2.{GLIBC_MINOR}", "runtimes": {}}
    for rt in list_runtimes().values():
        envs: dict = {}
        for py in pythons_for(rt):
            device = _resolve(list(rt.requirements), py, "arm64")
            pins = [f"{w['name']}=={w['version']}" for w in device]
            envs[py] = {"arm64": device, "x86_64": _resolve(list(rt.requirements), py, "x86_64", pins)}
            progress(f"{rt.name} Python {py}: " + ", ".join(f"{w['name']} {w['version']}" for w in device))
        lock["runtimes"][rt.name] = {"requirements": list(rt.requirements), "environments": envs}
    return lock


def main(argv=None) -> int:
    """``python -m packager.runtime_lock [--check] [--output FILE]``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m packager.runtime_lock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the lock against runtimes.toml")
    parser.add_argument("--output", type=Path, default=LOCK_FILE)
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for p in found:
            print(p)
        return 1 if found else 0
    lock = generate()
    args.output.write_text(json.dumps(lock, indent=1) + "\n", encoding="utf-8")
    load.cache_clear()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
