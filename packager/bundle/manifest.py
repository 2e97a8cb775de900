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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import UsageError

FORMAT = 1
MANIFEST = "manifest.json"


class VerificationStatus(str, Enum):
    """What ``build`` recorded about verification in ``manifest["verification"]["status"]``."""
    PENDING = "pending"        # only while the bundle is staged
    PASSED = "passed"
    FAILED = "failed"          # never in a written bundle: a failing bundle is not written
    SKIPPED = "skipped"        # --no-verify


class RuntimeStatus(str, Enum):
    """Per runtime of the target, in ``manifest["runtimes"][i]["status"]``."""
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"            # the runtime cannot run the model (left out of requirements.txt)
    UNAVAILABLE = "unavailable"  # its environment could not be prepared on the build host
    UNVERIFIED = "unverified"  # --no-verify, or not selected


@dataclass(frozen=True)
class Tensor:
    """A model input or output: TFLite tensor ``index``, ``shape`` (-1 = dynamic), numpy ``dtype``
    name, and ``scale``/``zero_point`` when quantized (real = scale * (q - zero_point))."""
    name: str
    index: int
    shape: tuple
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> "Tensor":
        q = data.get("quantization") or {}
        return cls(data["name"], int(data["index"]), tuple(int(d) for d in data["shape"]), data["dtype"],
                   float(q["scale"]) if q else None, int(q["zero_point"]) if q else None)

    @property
    def quantized(self) -> bool:
        return self.scale is not None


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
        for key in ("name", "entrypoint"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise bad(f"{key} is not a non-empty string")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", data["name"]):
            raise bad(f"name {data['name']!r} is not a bundle name")
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
