"""Target profiles and the runtimes they name, validated into frozen dataclasses.

- A target: one TOML file in ``targets/`` (or a directory named in ``EDGEPACK_TARGETS_PATH``).
  Adding a target = adding a file.
- A runtime: one table in ``packager/runtimes.toml`` (pip name, import name, requirements, Python
  range, op-version limits); targets name it (``runtimes = ["ai-edge-litert"]``). A target may also
  declare a runtime inline as a table (``[[runtimes]]`` with ``name``, ``module``, ``requirements``);
  a table whose name is in the registry overrides only the fields it gives."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import UsageError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"
RUNTIMES_FILE = Path(__file__).with_name("runtimes.toml")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")


@dataclass(frozen=True)
class RuntimeProfile:
    """A TFLite runtime a target can run bundles with (see ``packager/runtimes.toml``)."""
    name: str                 # pip distribution name, e.g. "ai-edge-litert"
    module: str               # import name, e.g. "ai_edge_litert"
    requirements: tuple[str, ...]
    python: str               # supported Python range on the device, e.g. ">=3.9,<3.14"
    note: str = ""
    interpreter: str = ""     # module holding Interpreter, e.g. "ai_edge_litert.interpreter"
    label: str = ""           # short name for tables, e.g. "litert"
    max_op_versions: tuple = ()   # ((op name, highest version it registers), ...)

    def op_version_limit(self, op: str) -> int | None:
        """Highest version of builtin ``op`` this runtime registers when it is known to be lower than
        what TF emits; None when no limit is known."""
        return dict(self.max_op_versions).get(op)

    @property
    def device_module(self) -> str:
        """The name the device script's --runtime flag takes."""
        return self.module


@dataclass(frozen=True)
class TargetProfile:
    """A target profile (``targets/NAME.toml``): ``arch``, the device's ``python`` version (also the arm64
    emulator's), ``default_recipe`` and the ``fallback_recipe`` used without calibration, the ``deploy`` method, the
    ``remote_dir`` template ({name} = bundle name), ``device_python``, the ``runtimes``, how many ``samples`` a
    bundle ships, whether it gets an Android ``assets/`` folder, install steps and run command, and the file it was
    read from (``source``)."""
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
        """The target's runtime ``name`` (pip name, import name, or ``NAME==VERSION``); UsageError listing the
        target's runtimes otherwise."""
        for rt in self.runtimes:
            if name in (rt.name, rt.module) or name.split("==")[0] == rt.name:
                return rt
        raise UsageError(f"target {self.name!r} has no runtime {name!r}",
                         hint="choose from: " + ", ".join(rt.name for rt in self.runtimes))

    def to_json(self) -> dict:
        """JSON of the profile for `edgepack targets`: name, description, arch, python, recipes, deploy, remote_dir,
        device_python, samples, and each runtime's name, module, requirements, python and note."""
        return {
            "name": self.name, "description": self.description, "arch": self.arch, "python": self.python,
            "default_recipe": self.default_recipe, "fallback_recipe": self.fallback_recipe, "deploy": self.deploy, "remote_dir": self.remote_dir,
            "device_python": self.device_python, "samples": self.samples,
            "runtimes": [{"name": r.name, "module": r.module, "requirements": list(r.requirements),
                          "python": r.python, "note": r.note} for r in self.runtimes],
        }


def _runtime_from(data: dict, where: str) -> RuntimeProfile:
    unknown = sorted(set(data) - set(RUNTIME_FIELDS)) if isinstance(data, dict) else []
    if unknown:
        raise UsageError(f"{where}: runtime {data.get('name')!r} has unknown field {', '.join(unknown)}",
                         hint="runtime fields: " + ", ".join(RUNTIME_FIELDS))
    base = _registry_raw().get(data.get("name"), {}) if isinstance(data, dict) else {}
    merged = {**base, **data}
    try:
        module = merged["module"]
        RUNTIMES = _script_runtimes()
        if module not in RUNTIMES:
            raise UsageError(f"{where}: runtime {merged['name']!r} imports {module!r}, which the device script cannot "
                             f"import (it knows {', '.join(RUNTIMES)})",
                             hint="add the module to RUNTIMES in device_runtime/edgepack_run.py, or name a runtime "
                                  "of packager/runtimes.toml")
        return RuntimeProfile(name=merged["name"], module=module, requirements=tuple(merged["requirements"]),
                              python=merged.get("python", ""), note=merged.get("note", ""),
                              interpreter=merged.get("interpreter") or f"{module}.interpreter",
                              label=merged.get("label") or merged["name"],
                              max_op_versions=tuple(sorted((merged.get("max_op_versions") or {}).items())))
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{where}: runtime entry lacks {exc}",
                         hint="a runtime table needs name, module and requirements (see packager/runtimes.toml)") from None


@lru_cache(maxsize=1)
def _script_runtimes() -> tuple[str, ...]:
    """The runtime modules the device script can import (its ``RUNTIMES``), read from its source: importing the
    script as a module imports numpy, which an unchanged ``edgepack build`` never needs (BENCHMARKS.md, issue 23)."""
    import ast
    import sys
    loaded = sys.modules.get("device_runtime.edgepack_run")
    if loaded is not None:
        return tuple(loaded.RUNTIMES)
    script = Path(__file__).resolve().parent.parent / "device_runtime" / "edgepack_run.py"
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RUNTIMES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError(f"{script} defines no RUNTIMES")


@lru_cache(maxsize=1)
def _registry_raw() -> dict:
    """packager/runtimes.toml as {pip name: table with its name}, read once."""
    data = tomllib.loads(RUNTIMES_FILE.read_text(encoding="utf-8"))
    return {name: {"name": name, **table} for name, table in data.items()}


def list_runtimes() -> dict[str, RuntimeProfile]:
    """The runtimes of ``packager/runtimes.toml`` by pip name."""
    return {name: _runtime_from(table, str(RUNTIMES_FILE)) for name, table in _registry_raw().items()}


def get_runtime(name: str) -> RuntimeProfile | None:
    """The registry's runtime ``name`` (pip or import name), or None when it is not registered."""
    for rt in list_runtimes().values():
        if name in (rt.name, rt.module):
            return rt
    return None


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEPACK_TARGETS_PATH", "").split(os.pathsep) if p]
    return dirs + [BUILTIN_DIR]


#: CPU architectures a target may have: the ones the TFLite runtimes publish wheels for.
ARCHES = ("arm64", "x86_64")
#: The keys a runtime table may have (packager/runtimes.toml, or inline in a target profile).
RUNTIME_FIELDS = ("name", "module", "interpreter", "requirements", "python", "note", "label", "max_op_versions")

#: The fields of a target profile: type, required. ``targets/rpi.toml`` is a complete example.
FIELDS = {"name": (str, True), "description": (str, False), "arch": (str, True), "python": (str, False),
          "default_recipe": (str, True), "fallback_recipe": (str, False), "deploy": (str, True),
          "remote_dir": (str, True), "device_python": (str, False), "samples": (int, False),
          "android_assets": (bool, False), "runtimes": (list, True), "install": (dict, False)}


def _parse(path: Path) -> TargetProfile:
    def bad(msg: str) -> UsageError:
        return UsageError(f"target profile {path}: {msg}",
                          hint=f"see {BUILTIN_DIR / 'rpi.toml'} for a complete profile; fields: " + ", ".join(FIELDS))

    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise bad(f"{path.stat().st_size:,} bytes; a target profile is a few hundred")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise bad(str(exc)) from None
    except RecursionError:
        raise bad("nested too deeply to be a target profile") from None
    if isinstance(data.get("runtimes"), list) and len(data["runtimes"]) > MAX_RUNTIMES:
        raise bad(f"lists {len(data['runtimes']):,} runtimes; at most {MAX_RUNTIMES}")
    missing = [k for k, (_, required) in FIELDS.items() if required and k not in data]
    if missing:
        raise bad("missing " + ", ".join(missing))
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise bad(f"unknown field {', '.join(unknown)}")
    for key, (kind, _) in FIELDS.items():
        if key in data and (not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool))):
            what = {dict: "a table", int: "an integer", str: "a string", list: "a list", bool: "true or false"}[kind]
            raise bad(f"{key} must be {what}, not {data[key]!r}")
    if not _NAME.match(data["name"]) or data["name"] != path.stem:
        raise bad(f"name {data['name']!r} must match the file name and [a-z0-9_-]")
    if not _NAME.match(data["deploy"]):
        raise bad(f"deploy {data['deploy']!r} is not a deploy method name")   # which exist: packager.deploy.transports
    if data["arch"] not in ARCHES:
        raise bad(f"arch {data['arch']!r} is not one of {', '.join(ARCHES)} (the CPUs the runtimes have wheels for)")
    if data.get("samples", 16) < 1:
        raise bad("samples must be at least 1")
    from .recipes import list_recipes
    for key in ("default_recipe", "fallback_recipe"):
        if key in data and data[key] not in list_recipes():
            raise bad(f"{key} {data[key]!r} is not one of {', '.join(list_recipes())}")
    install = data.get("install", {})
    if set(install) - {"steps", "run"} or not isinstance(install.get("steps", []), list) \
            or not all(isinstance(x, str) for x in install.get("steps", [])) or not isinstance(install.get("run", ""), str):
        raise bad("[install] takes steps (a list of strings) and run (a string)")
    runtimes = []
    for rt in data["runtimes"]:
        if isinstance(rt, str):
            if rt not in _registry_raw():
                raise bad(f"runtime {rt!r} is not one of {', '.join(_registry_raw())} (packager/runtimes.toml); "
                          "declare others as a table with name, module and requirements")
            rt = {"name": rt}
        if not isinstance(rt, dict):
            raise bad(f"runtime entry {rt!r} is neither a runtime name nor a table")
        runtimes.append(_runtime_from(rt, f"target profile {path}"))
    if not runtimes:
        raise bad("declares no runtime")
    return TargetProfile(
        name=data["name"], description=data.get("description", ""), arch=data["arch"],
        python=str(data.get("python", "3")), default_recipe=data["default_recipe"],
        fallback_recipe=data.get("fallback_recipe", "float16"), deploy=data["deploy"],
        remote_dir=data["remote_dir"], device_python=data.get("device_python", "python3"),
        runtimes=tuple(runtimes), samples=data.get("samples", 16),
        android_assets=data.get("android_assets", False),
        install_steps=tuple(install.get("steps", ())), run=install.get("run", ""), source=str(path),
    )


MAX_PROFILE_BYTES = 256 * 1024
MAX_RUNTIMES = 32


def list_targets() -> dict[str, TargetProfile]:
    """Every target profile by name: the ``EDGEPACK_TARGETS_PATH`` directories first (the first file of a name wins),
    then the built-in ``targets/``. Every file is parsed; an invalid one raises UsageError."""
    found: dict[str, TargetProfile] = {}
    for directory in _search_dirs():
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, _parse(path))
    return found


def get_target(name: str) -> TargetProfile:
    """The target profile ``name``; UsageError listing the known targets when there is none (or when any profile is
    invalid)."""
    targets = list_targets()
    if name not in targets:
        raise UsageError(f"unknown target {name!r}", hint="choose from: " + ", ".join(sorted(targets)))
    return targets[name]
