"""Target profiles: one TOML file per target in ``targets/`` (plus any directory named in
``EDGEPACK_TARGETS_PATH``), validated into frozen dataclasses. Adding a target = adding a file."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import UsageError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"
DEPLOY_METHODS = ("ssh", "adb")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")


@dataclass(frozen=True)
class RuntimeProfile:
    name: str                 # pip distribution name, e.g. "ai-edge-litert"
    module: str               # import name, e.g. "ai_edge_litert"
    requirements: tuple[str, ...]
    python: str               # supported Python range on the device, e.g. ">=3.9,<3.14"
    note: str = ""

    @property
    def device_module(self) -> str:
        """The name the device script's --runtime flag takes."""
        return self.module


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    arch: str
    python: str
    default_recipe: str
    fallback_recipe: str      # used when the default needs calibration and none was given
    deploy: str
    remote_dir: str
    device_python: str
    runtimes: tuple[RuntimeProfile, ...]
    samples: int = 16
    android_assets: bool = False
    install_steps: tuple[str, ...] = ()
    run: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def runtime(self, name: str) -> RuntimeProfile:
        for rt in self.runtimes:
            if name in (rt.name, rt.module) or name.split("==")[0] == rt.name:
                return rt
        raise UsageError(f"target {self.name!r} has no runtime {name!r}",
                         hint="choose from: " + ", ".join(rt.name for rt in self.runtimes))

    def to_json(self) -> dict:
        return {
            "name": self.name, "description": self.description, "arch": self.arch, "python": self.python,
            "default_recipe": self.default_recipe, "fallback_recipe": self.fallback_recipe, "deploy": self.deploy, "remote_dir": self.remote_dir,
            "device_python": self.device_python, "samples": self.samples,
            "runtimes": [{"name": r.name, "module": r.module, "requirements": list(r.requirements),
                          "python": r.python, "note": r.note} for r in self.runtimes],
        }


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEPACK_TARGETS_PATH", "").split(os.pathsep) if p]
    return dirs + [BUILTIN_DIR]


def _parse(path: Path) -> TargetProfile:
    def bad(msg: str) -> UsageError:
        return UsageError(f"target profile {path}: {msg}")

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise bad(str(exc)) from None
    required = ("name", "arch", "deploy", "remote_dir", "default_recipe", "runtimes")
    missing = [k for k in required if k not in data]
    if missing:
        raise bad("missing " + ", ".join(missing))
    if not _NAME.match(str(data["name"])) or data["name"] != path.stem:
        raise bad(f"name {data['name']!r} must match the file name and [a-z0-9_-]")
    if data["deploy"] not in DEPLOY_METHODS:
        raise bad(f"deploy {data['deploy']!r} is not one of {', '.join(DEPLOY_METHODS)}")
    runtimes = []
    for rt in data["runtimes"]:
        try:
            runtimes.append(RuntimeProfile(name=rt["name"], module=rt["module"],
                                           requirements=tuple(rt["requirements"]),
                                           python=rt.get("python", ""), note=rt.get("note", "")))
        except (KeyError, TypeError) as exc:
            raise bad(f"runtime entry lacks {exc}") from None
    if not runtimes:
        raise bad("declares no runtime")
    install = data.get("install", {})
    return TargetProfile(
        name=data["name"], description=data.get("description", ""), arch=data["arch"],
        python=str(data.get("python", "3")), default_recipe=data["default_recipe"],
        fallback_recipe=data.get("fallback_recipe", "float16"), deploy=data["deploy"],
        remote_dir=data["remote_dir"], device_python=data.get("device_python", "python3"),
        runtimes=tuple(runtimes), samples=int(data.get("samples", 16)),
        android_assets=bool(data.get("android_assets", False)),
        install_steps=tuple(install.get("steps", ())), run=install.get("run", ""), source=str(path),
    )


def list_targets() -> dict[str, TargetProfile]:
    found: dict[str, TargetProfile] = {}
    for directory in _search_dirs():
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, _parse(path))
    return found


def get_target(name: str) -> TargetProfile:
    targets = list_targets()
    if name not in targets:
        raise UsageError(f"unknown target {name!r}", hint="choose from: " + ", ".join(sorted(targets)))
    return targets[name]
