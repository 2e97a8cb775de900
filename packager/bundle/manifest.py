"""The bundle's manifest as a type: the only reader of ``manifest.json`` on the host.

``manifest.json`` (format :data:`FORMAT`, see docs/bundle-format.md) is validated on read:
the fields the device script needs by the device script's own checks
(:func:`device_runtime.edgepack_run.check_manifest`, so host and device agree on what a valid
manifest is), the host's fields here. A :class:`Manifest` is frozen; it is also a read-only
mapping of the JSON (``manifest["inputs"]``), so code that reads raw keys keeps working while
callers move to the attributes.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import UsageError
from ..tensor import Tensor

FORMAT = 1
MANIFEST = "manifest.json"

#: The one bundle-name rule (bundle directories, archives, device release directories): letters,
#: digits, '.', '_', '-'; starting with a letter or digit; at most 100 characters.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_HINT = "use letters, digits, '.', '_' or '-' (at most 100), starting with a letter or digit"


def check_name(name: object, what: str = "bundle name") -> str:
    """``name`` if it follows :data:`NAME_RE`; UsageError naming ``what`` otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(f"{what} {name!r} is not allowed", hint=NAME_HINT)
    return name


def default_name(model: Path, target: str) -> str:
    """The bundle name ``build`` uses without ``--name``: ``MODEL-TARGET``, where MODEL is the file's
    stem (``mnist.h5`` -> ``mnist``), a SavedModel directory's name, or its parent's when the directory
    is a version number (``saved/mnist/3`` -> ``mnist``); characters outside :data:`NAME_RE` become '-'."""
    path = Path(os.path.abspath(model))
    if path.is_dir():
        stem = path.parent.name if path.name.isdigit() and path.parent.name else path.name
    else:
        stem = path.stem if path.suffix else path.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("._-")[:90] or "model"
    return check_name(f"{stem}-{target}")


class VerificationStatus(str, Enum):
    """What ``build`` recorded about verification in ``manifest["verification"]["status"]``."""
    PENDING = "pending"        # only while the bundle is staged
    PASSED = "passed"
    FAILED = "failed"          # never in a written bundle: a failing bundle is not written
    SKIPPED = "skipped"        # --no-verify

    def __str__(self) -> str:          # "passed" in text, as in the JSON (not "RuntimeStatus.PASSED")
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RuntimeStatus(str, Enum):
    """Per runtime of the target, in ``manifest["runtimes"][i]["status"]``."""
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"            # the runtime cannot run the model (left out of requirements.txt)
    UNAVAILABLE = "unavailable"  # its environment could not be prepared on the build host
    UNVERIFIED = "unverified"  # --no-verify, or not selected

    def __str__(self) -> str:          # "passed" in text, as in the JSON (not "RuntimeStatus.PASSED")
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class Manifest(Mapping):
    """A validated ``manifest.json``: name, model file and its sha256/size, typed inputs and
    outputs, recipe and target names, per-runtime status, verification status; ``data`` is the
    whole JSON object (read-only through the mapping interface)."""
    name: str
    model: str
    entrypoint: str
    model_sha256: str
    model_size: int
    inputs: tuple
    outputs: tuple
    recipe: str
    target: str
    runtimes: tuple
    verification: VerificationStatus
    data: Mapping = field(repr=False, compare=False)

    # -- the mapping interface: the JSON as it is --------------------------------------------
    def __getitem__(self, key):
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def to_json(self) -> dict:
        """A deep copy of the manifest's JSON object (plain dicts and lists)."""
        return json.loads(json.dumps(self.data))

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data, where: str = MANIFEST) -> "Manifest":
        """Validate ``data`` (a parsed manifest.json). Raises UsageError naming the first bad field."""
        from device_runtime.edgepack_run import Failure, check_manifest

        def bad(what: str) -> UsageError:
            return UsageError(f"{where}: {what}", hint="rebuild the bundle with `edgepack build`; files were changed "
                                                       "or it was not written by edgepack")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("format") != FORMAT:
            raise bad(f"format {data.get('format')!r}; this edgepack reads format {FORMAT}")
        try:
            check_manifest(data)
        except Failure as exc:
            raise bad(exc.message.replace("manifest.json: ", "").replace("manifest.json ", "")) from None
        if not isinstance(data.get("name"), str) or not NAME_RE.fullmatch(data["name"]):
            raise bad(f"name {data.get('name')!r} is not a bundle name ({NAME_HINT})")
        if not isinstance(data.get("entrypoint"), str) or not data["entrypoint"]:
            raise bad("entrypoint is not a non-empty string")
        for key in ("recipe", "target"):
            if not isinstance(data.get(key), dict) or not isinstance(data[key].get("name"), str):
                raise bad(f"{key} has no name")
        runtimes = data.get("runtimes", [])
        if not isinstance(runtimes, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                                     for r in runtimes):
            raise bad("runtimes must be a list of objects with a name")
        statuses = {s.value for s in RuntimeStatus}
        for r in runtimes:
            if r.get("status") not in statuses:
                raise bad(f"runtime {r['name']!r} has status {r.get('status')!r} (one of {', '.join(sorted(statuses))})")
        files = data.get("files", {})
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise bad("files must map paths to sha256 digests")
        samples = data.get("samples") or {}
        for key, rel in [("model", data["model"]), ("entrypoint", data["entrypoint"]), ("labels", data.get("labels")),
                         ("samples.inputs", samples.get("inputs")), ("samples.expected", samples.get("expected"))] \
                + [(f"files[{k!r}]", k) for k in files]:
            if rel is not None and not _inside_bundle(rel):
                raise bad(f"{key} {rel!r} is not a relative path inside the bundle")
        verification = data.get("verification")
        try:
            status = VerificationStatus((verification or {}).get("status"))
        except ValueError:
            raise bad(f"verification status {(verification or {}).get('status')!r} is not one of "
                      + ", ".join(s.value for s in VerificationStatus)) from None
        return cls(data["name"], data["model"], data["entrypoint"], data["model_sha256"], int(data["model_size"]),
                   tuple(Tensor.from_json(t) for t in data["inputs"]),
                   tuple(Tensor.from_json(t) for t in data["outputs"]),
                   data["recipe"]["name"], data["target"]["name"],
                   tuple((r["name"], RuntimeStatus(r["status"])) for r in runtimes), status, data)

    @classmethod
    def read(cls, bundle: Path) -> "Manifest":
        """The manifest of the bundle directory ``bundle``. Raises UsageError when there is none or it
        is invalid."""
        path = Path(bundle) / MANIFEST
        if not path.is_file():
            raise UsageError(f"{bundle} is not an edgepack bundle (no {MANIFEST})",
                             hint="pass the directory written by `edgepack build -o DIR`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path} is unreadable: {exc}") from None
        return cls.from_json(data, str(path))

    # -- typed views of the other fields -----------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        """Input names in the model's order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in the model's order."""
        return [t.name for t in self.outputs]

    @property
    def runtime_names(self) -> list[str]:
        """The target's runtimes (pip distribution names) the bundle lists."""
        return [name for name, _ in self.runtimes]

    def wheels(self, runtime: str) -> list[dict]:
        """The exact wheels the bundle locks for ``runtime`` (name, version, filename, sha256, platform, python,
        arch, verified: docs/bundle-format.md); empty for a runtime the lock does not cover or an older bundle."""
        for rt in self.data.get("runtimes", []):
            if rt.get("name") == runtime and isinstance(rt.get("wheels"), list):
                return [dict(w) for w in rt["wheels"] if isinstance(w, dict)]
        return []

    @property
    def samples(self) -> str | None:
        """Relative path of the bundled sample inputs (``samples/inputs.npz``), or None."""
        return (self.data.get("samples") or {}).get("inputs")

    @property
    def tolerance(self) -> dict:
        """Per output name, the tolerance the bundle was built with: ``{"atol", "rtol", ...}`` (see
        :class:`packager.recipes.Tolerance`); empty for bundles that recorded none."""
        recorded = self.data.get("tolerance") or {}
        return {k: dict(v) for k, v in recorded.items() if isinstance(v, Mapping)}

    @property
    def fixed(self) -> dict:
        """``{"batch": int}`` and/or ``{"variable_axes": [...]}`` when the model has them; else ``{}``."""
        return dict(self.data.get("fixed") or {})

    @property
    def source(self) -> dict:
        """Where the model came from: ``path`` (file name), ``format``, ``sha256``, ``conversion_path``."""
        return dict(self.data.get("source") or {})

    @property
    def target_info(self) -> dict:
        """The target profile as recorded at build time (``deploy``, ``remote_dir``, ``device_python``, ...)."""
        return dict(self.data.get("target") or {})

    def tensor(self, name: str) -> Tensor:
        """The input or output called ``name``; KeyError when there is none."""
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)


def _inside_bundle(rel) -> bool:
    """A relative POSIX path with no empty, '.' or '..' component and no backslash."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
