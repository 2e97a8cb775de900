"""Defaults for command-line options from a file in the current directory: ``edgepack.toml``, else
``[tool.edgepack]`` in ``pyproject.toml``. Sections are commands, keys their long option names::

    [build]
    target = "rpi"
    quantize = "int8"
    calibration = "data/calibration.npz"     # paths are relative to the file
    data = "data/eval.npz"
    atol = ["probs:0.05"]

    [verify]
    data = "data/eval.npz"

    [deploy]
    host = "pi@raspberrypi.local"

    [fleet.deploy]
    inventory = "inventory.ini"

Options given on the command line win. An unknown section or key is an error naming the valid
ones. ``--trust-model`` and ``--json`` are never read from a file: a checked-out repository must not
be able to switch the model safety checks off for whoever builds in it."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError

NEVER_FROM_FILE = {"trust_model", "json_output", "as_json", "help", "version"}


def find(cwd: Path) -> tuple[Path, dict] | None:
    """The config file in ``cwd`` and its edgepack table, or None."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    for name, pick in (("edgepack.toml", lambda d: d), ("pyproject.toml", lambda d: d.get("tool", {}).get("edgepack"))):
        path = cwd / name
        if not path.is_file():
            continue
        try:
            table = pick(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}", hint="fix the file or remove it") from None
        if table is not None:
            if not isinstance(table, dict):
                raise UsageError(f"{path}: the edgepack settings must be a table of commands")
            return path, table
    return None


def default_map(command, cwd: Path | None = None) -> dict | None:
    """click's ``default_map`` for ``command`` (the click group of the app) from the config file."""
    found = find(Path(cwd or Path.cwd()))
    if found is None:
        return None
    path, table = found
    return _section(command, table, path, [])


def _section(command, table: dict, path: Path, where: list[str]) -> dict:
    out = {}     # duck-typed: typer vendors its own click
    if hasattr(command, "commands"):
        for name, value in table.items():
            sub = command.commands.get(name)
            if sub is None or not isinstance(value, dict):
                raise UsageError(f"{path}: unknown section [{'.'.join(where + [name])}]",
                                 hint="sections are commands: " + ", ".join(sorted(command.commands)))
            out[name] = _section(sub, value, path, where + [name])
        return out
    params = {}
    for p in command.params:
        if getattr(p, "param_type_name", "") == "option" and p.name not in NEVER_FROM_FILE and not p.hidden:
            params[p.name] = p
            for opt in p.opts:
                if opt.startswith("--"):
                    params[opt[2:].replace("-", "_")] = p
    for key, value in table.items():
        p = params.get(key.replace("-", "_"))
        if p is None:
            raise UsageError(f"{path}: [{'.'.join(where)}] has no option {key!r}",
                             hint="valid: " + ", ".join(sorted(k for k, v in params.items() if k == v.name)))
        if _is_path(p):
            value = ([str(path.parent / Path(v).expanduser()) for v in value] if isinstance(value, list)
                     else str(path.parent / Path(value).expanduser()))
        out[p.name] = value
    return out


def _is_path(param) -> bool:
    """Does this option take a path (relative paths in the file are relative to the file)?"""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is not None:
        return annotation is Path or "Path" in repr(annotation)
    return type(getattr(param, "type", None)).__name__ == "Path"
