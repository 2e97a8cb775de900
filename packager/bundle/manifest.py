"""The bundle's manifest as a type: the only reader of ``manifest.json`` on the host.

``manifest.json`` (format :data:`FORMAT`, see docs/bundle-format.md) is validated on read:
the fields the device script needs by the device script's own checks
(:func:`device_runtime.edgepack_run.check_manifest`, so host and device agree on what a valid
manifest is), the host's fields here. A :class:`Manifest` is frozen and typed: every field the host
reads is an attribute (no raw ``manifest["..."]`` lookups), it is written only by :meth:`Manifest.to_bytes`
and read only by :meth:`Manifest.from_json` / :meth:`Manifest.read` / :func:`parse` (a device's copy).
A new field is added here (validated in ``from_json``, read through a property, set by ``contents.stage``).
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
from ..jsonsafe import clean
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
class RuntimeEntry:
    """One runtime of ``manifest["runtimes"]``: its pip distribution ``name``, Python ``module``, pip
    ``requirements`` (ranges), ``status``, the exact ``wheels`` the runtime lock gives it (dicts with name,
    version, filename, sha256, platform, python, arch, verified; empty for a runtime the lock does not cover or an
    older bundle), and the ``reason``, ``version`` and ``arch`` its verification recorded."""
    name: str
    status: RuntimeStatus
    module: str | None = None
    requirements: tuple = ()
    wheels: tuple = ()
    reason: str | None = None
    version: str | None = None
    arch: str | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> "RuntimeEntry":
        """The entry of a validated manifest (``name`` and ``status`` checked by :meth:`Manifest.from_json`)."""
        wheels = data.get("wheels") if isinstance(data.get("wheels"), list) else []
        requirements = data.get("requirements") if isinstance(data.get("requirements"), list) else []

        def text(key):
            return data[key] if isinstance(data.get(key), str) else None
        return cls(data["name"], RuntimeStatus(data["status"]), text("module"),
                   tuple(str(r) for r in requirements), tuple(dict(w) for w in wheels if isinstance(w, dict)),
                   text("reason"), text("version"), text("arch"))

    @property
    def usable(self) -> bool:
        """The runtime may run the bundle (passed, or not shown not to): it gets a requirements file."""
        return self.status in (RuntimeStatus.PASSED, RuntimeStatus.UNVERIFIED, RuntimeStatus.UNAVAILABLE)


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json``: name, model file and its sha256/size, typed inputs and
    outputs, recipe and target names, the runtimes (:class:`RuntimeEntry`), verification status, and
    through properties every other field the host reads (files, samples, labels, tolerance, fixed, source,
    target, versions, the verification record). :meth:`to_json` gives the JSON object as written."""
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
    _json: Mapping = field(repr=False, compare=False)

    # -- writing: the one writer of manifest.json -------------------------------------------------
    def to_json(self) -> dict:
        """The manifest's JSON object as manifest.json holds it (plain dicts and lists, a deep copy)."""
        return json.loads(self.to_bytes())

    def to_bytes(self) -> bytes:
        """manifest.json's bytes (:func:`manifest_bytes` of the JSON object)."""
        return manifest_bytes(self._json)

    def replace(self, **fields) -> "Manifest":
        """This manifest with top-level JSON ``fields`` set (``files=``, ``verification=``, ``runtimes=``,
        ``source=``, ...), validated again: how staging completes a manifest before it is written."""
        return Manifest.from_json({**self._json, **fields})

    @classmethod
    def new(cls, **fields) -> "Manifest":
        """A manifest of format :data:`FORMAT` from its top-level JSON ``fields`` (in the order given: the order of
        manifest.json), validated as on read. Raises UsageError naming the first bad field."""
        return cls.from_json({"format": FORMAT, **fields}, "the manifest being written")

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
                   tuple(RuntimeEntry.from_json(r) for r in runtimes), status, data)

    @classmethod
    def read(cls, bundle: Path) -> "Manifest":
        """The manifest of the bundle directory ``bundle``. Raises UsageError when there is none or it
        is invalid."""
        return cls.read_bytes(bundle)[0]

    @classmethod
    def read_bytes(cls, bundle: Path) -> tuple["Manifest", bytes]:
        """(the manifest, manifest.json's bytes as read) of the bundle directory ``bundle``: one read, so the
        bytes are those the manifest was validated from. Raises UsageError when there is none, it is a
        symbolic link, or it is invalid."""
        path = Path(bundle) / MANIFEST
        if path.is_symlink():
            raise UsageError(f"{path} is a symbolic link; refused", hint="rebuild the bundle with edgepack build")
        if not path.is_file():
            raise UsageError(f"{bundle} is not an edgepack bundle (no {MANIFEST})",
                             hint="pass the directory written by `edgepack build -o DIR`")
        try:
            raw = path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path} is unreadable: {exc}") from None
        return cls.from_json(data, str(path)), raw

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
        return [rt.name for rt in self.runtimes]

    def wheels(self, runtime: str) -> list[dict]:
        """The exact wheels the bundle locks for ``runtime`` (name, version, filename, sha256, platform, python,
        arch, verified: docs/bundle-format.md); empty for a runtime the lock does not cover or an older bundle."""
        for rt in self.runtimes:
            if rt.name == runtime:
                return [dict(w) for w in rt.wheels]
        return []

    @property
    def all_wheels(self) -> list[dict]:
        """Every locked wheel of every runtime (each with a sha256), in the manifest's order."""
        return [dict(w) for rt in self.runtimes for w in rt.wheels if isinstance(w.get("sha256"), str)]

    @property
    def files(self) -> dict[str, str]:
        """``{relative path: "sha256:HEX"}`` of every file of the bundle but manifest.json (empty while staged)."""
        return dict(self._json.get("files") or {})

    @property
    def samples(self) -> str | None:
        """Relative path of the bundled sample inputs (``samples/inputs.npz``), or None."""
        return self._samples.get("inputs")

    @property
    def expected(self) -> str | None:
        """Relative path of the bundled model's outputs on the samples (``samples/expected.npz``), or None."""
        return self._samples.get("expected")

    @property
    def _samples(self) -> dict:
        samples = self._json.get("samples")
        return samples if isinstance(samples, dict) else {}

    @property
    def labels(self) -> str | None:
        """Relative path of the class names (``labels.txt``), or None."""
        return self._json.get("labels")

    @property
    def tolerance(self) -> dict:
        """Per output name, the tolerance the bundle was built with: ``{"atol", "rtol", ...}`` (see
        :class:`packager.recipes.Tolerance`); empty for bundles that recorded none."""
        recorded = self._json.get("tolerance") or {}
        return {k: dict(v) for k, v in recorded.items() if isinstance(v, Mapping)}

    @property
    def fixed(self) -> dict:
        """``{"batch": int}`` and/or ``{"variable_axes": [...]}`` when the model has them; else ``{}``."""
        return dict(self._json.get("fixed") or {})

    @property
    def source(self) -> dict:
        """Where the model came from: ``path`` (file name), ``format``, ``sha256``, ``conversion_path``,
        ``signature`` and ``build_key`` when recorded."""
        return dict(self._json.get("source") or {})

    @property
    def versions(self) -> dict:
        """The versions that wrote the bundle (``edgepack``, ``tensorflow``, ``keras``, ``converter``); ``{}``
        when none were recorded."""
        versions = self._json.get("versions")
        return dict(versions) if isinstance(versions, dict) else {}

    @property
    def recipe_info(self) -> dict:
        """The recipe as recorded at build time (``name``, ``io``, ``description``, ...)."""
        return dict(self._json["recipe"])

    @property
    def target_info(self) -> dict:
        """The target profile as recorded at build time (``deploy``, ``remote_dir``, ``device_python``, ...)."""
        return dict(self._json.get("target") or {})

    def _target_text(self, key: str) -> str | None:
        value = self._json["target"].get(key)
        return value if isinstance(value, str) else None

    @property
    def deploy(self) -> str | None:
        """The target's deploy method as recorded (``ssh``, ``adb``), or None."""
        return self._target_text("deploy")

    @property
    def remote_dir(self) -> str | None:
        """The target's device directory template as recorded (``~/edgepack/{name}``), or None."""
        return self._target_text("remote_dir")

    @property
    def device_python(self) -> str | None:
        """The Python the target's device runs the script with as recorded (``python3``), or None."""
        return self._target_text("device_python")

    @property
    def target_python(self) -> str | None:
        """The Python version of the target's devices as recorded (``3.11``), or None."""
        return self._target_text("python")

    @property
    def verification_record(self) -> dict:
        """The whole verification record: ``status`` and, when verified, the verdict's summary
        (:meth:`packager.verification.report.VerifyReport.summary`)."""
        return dict(self._json.get("verification") or {})

    @property
    def verified_runtimes(self) -> list[dict]:
        """What each runtime of the recorded verdict ran on (runtime, version, arch, machine, python, wheels...);
        empty when the bundle was not verified."""
        runtimes = self.verification_record.get("runtimes")
        return [dict(r) for r in runtimes if isinstance(r, dict)] if isinstance(runtimes, list) else []

    def tensor(self, name: str) -> Tensor:
        """The input or output called ``name``; KeyError when there is none."""
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)


def parse(text: str | bytes, where: str = MANIFEST) -> Manifest:
    """A manifest from manifest.json's text (a device's copy, an archive member). Raises UsageError when it is not
    JSON or not a valid manifest."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where} is not valid JSON ({exc})") from None
    return Manifest.from_json(data, where)


def manifest_bytes(manifest: Mapping) -> bytes:
    """manifest.json's bytes: JSON indented by 2, key order kept, numpy scalars as plain numbers, non-finite
    floats as strings (:mod:`packager.jsonsafe`), a final newline. TypeError for any other value JSON cannot hold."""
    plain = json.loads(json.dumps(manifest, default=_json_default))
    return (json.dumps(clean(plain), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def _json_default(value):
    import numpy as np
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _inside_bundle(rel) -> bool:
    """A relative POSIX path with no empty, '.' or '..' component and no backslash."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
