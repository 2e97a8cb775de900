"""The host emulator: run the bundle's own device script, exactly as the device would, in an
environment that holds only one target runtime and numpy, and compare with the reference.

Environments hold exactly the wheels of ``packager/runtimes.lock.json`` for their Python and architecture
(:mod:`packager.runtime_lock`; ``pip install --require-hashes --only-binary :all: --no-deps``) and record them;
a runtime the lock does not cover (declared only in a target profile) is installed from its ranges.
They are built once per (locked wheels or requirements, Python, architecture) and cached under
``$EDGEPACK_ENV_DIR`` (default ``$EDGEPACK_CACHE_DIR``, else ``~/.cache/edgepack``). Host-architecture environments are
plain venvs without system site-packages, so the host's TensorFlow is not importable there;
``arm64`` environments come from :mod:`packager.verification.arm64` (qemu-user + real aarch64 wheels).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..lazynp import np

from ..bundle.manifest import Manifest, RuntimeStatus
from ..bundle.files import host_entrypoint, npz_stored, read_manifest
from ..compare import OutputMetrics, compare_all, merge_metrics
from ..errors import EnvironmentProblem, UsageError
from ..paths import env_dir
from ..targets import RuntimeProfile

ENV_VERSION = 2           # bump to invalidate cached environments (2: installed from the runtime lock)
WHEELS = ".edgepack-wheels.json"   # the locked wheels an environment holds
PIP_TIMEOUT = 900
RUN_TIMEOUT = 600
RUNTIME_MEMORY_ENV = "EDGEPACK_RUNTIME_MEMORY_MB"   # read by the device script's isolation child
DEFAULT_RUNTIME_MEMORY_MB = 4096


@functools.lru_cache(maxsize=1)
def _device_exit() -> dict:
    """The device script's exit codes and what they mean (its own table, the one source): read when first needed,
    since importing the script imports numpy (an unchanged build never needs it)."""
    from device_runtime.edgepack_run import EXIT_MEANINGS
    return {code: meaning for code, meaning in EXIT_MEANINGS.items() if code}


def __getattr__(name):     # DEVICE_EXIT, the module attribute (PEP 562)
    if name == "DEVICE_EXIT":
        return _device_exit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def host_arch() -> str:
    """This machine's CPU as target profiles name it: ``x86_64`` or ``arm64``."""
    machine = platform.machine().lower()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class RuntimeEnv:
    """A prepared environment holding one TFLite runtime and numpy (no TensorFlow): how to start its
    Python (``argv``, ``env``) and which runtime version it holds."""
    runtime: str                 # distribution name, e.g. "tflite-runtime"
    module: str                  # device script --runtime value
    requirements: tuple
    arch: str
    argv: tuple                  # command prefix that runs this environment's Python
    env: dict = field(default_factory=dict, compare=False)
    version: str = ""
    note: str = field(default="", compare=False)     # e.g. the cached environment was tampered with and rebuilt
    wheels: tuple = field(default=(), compare=False)  # the locked wheels it holds (runtime_lock entries); () = unlocked

    def describe(self) -> str:
        """``RUNTIME VERSION (ARCH)``, e.g. ``tflite-runtime 2.14.0 (arm64)``, for messages."""
        return f"{self.runtime} {self.version} ({self.arch})"


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA", "TF_")) and k != "LD_PRELOAD"}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"     # nothing is written into a recorded environment (see tampered)
    env.update(extra or {})
    return env


def _python_ok(spec: str, version: tuple) -> bool:
    """Tiny specifier check for ranges like '>=3.9,<3.14' (no third-party dependency)."""
    ops = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
           ">": lambda a, b: a > b, "==": lambda a, b: a[:len(b)] == b}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for op in (">=", "<=", "==", "<", ">"):
            if part.startswith(op):
                want = tuple(int(x) for x in part[len(op):].split("."))
                if not ops[op](version[:len(want)], want):
                    return False
                break
    return True


def _probe(argv: list, env: dict) -> dict:
    code = ("import json,platform,importlib\n"
            "try:\n import tensorflow; tf=True\nexcept Exception: tf=False\n"
            "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), 'tensorflow': tf}))")
    out = subprocess.run([*argv, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise EnvironmentProblem(f"the runtime environment's Python does not start: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _installed_version(argv: list, env: dict, dist: str) -> str:
    out = subprocess.run([*argv, "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                         capture_output=True, text=True, env=env, timeout=300)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _locked(runtime: RuntimeProfile, python: str, arch: str) -> tuple:
    """The lock's wheels for ``runtime`` on this Python/arch; () for a runtime the lock does not cover (a target's
    own runtime table). A registry runtime the lock lacks is a stale lock: EnvironmentProblem."""
    from .. import runtime_lock
    from ..targets import get_runtime
    found = runtime_lock.wheels(runtime, python, arch)
    if found:
        return found
    registered = get_runtime(runtime.name)
    if registered is not None and registered.requirements == runtime.requirements:
        have = ", ".join(f"Python {py} {a}" for py, a in runtime_lock.covered(runtime)) or "nothing"
        raise EnvironmentProblem(f"packager/runtimes.lock.json has no {runtime.name} wheels for Python {python} on "
                                 f"{arch} (it has {have})",
                                 hint="regenerate it: python -m packager.runtime_lock (README: Runtime lock)")
    return ()


def _host_root(runtime: RuntimeProfile) -> tuple:
    """(the locked wheels of ``runtime`` on this host, the directory of its cached environment)."""
    from .. import runtime_lock
    locked = _locked(runtime, "%d.%d" % sys.version_info[:2], host_arch())
    key = hashlib.sha256(json.dumps([ENV_VERSION, list(runtime.requirements), sys.version_info[:2],
                                     host_arch(), runtime_lock.key(locked)]).encode()).hexdigest()[:16]
    return locked, env_dir() / "envs" / f"{runtime.name}-{host_arch()}-{key}"


def check_ahead(runtimes) -> None:
    """Start checking the cached host environments of ``runtimes`` for tampering (:func:`tampered`: every file
    hashed, ~0.7 s for the two rpi environments) in a background thread, while the build converts in its child;
    :func:`host_env` then finds them checked. Environments not made yet are left to :func:`host_env`, and any
    problem is left for it to find and say (issue 23)."""
    import threading

    def check():
        for rt in runtimes:
            try:
                root = _host_root(rt)[1]
                if (root / ".complete").is_file():
                    tampered(root)
            except Exception:  # noqa: BLE001, S112 - host_env checks again and reports
                continue
    threading.Thread(target=check, name="edgepack-env-check", daemon=True).start()


def host_env(runtime: RuntimeProfile, progress=None) -> RuntimeEnv:
    """A cached venv on the host's architecture holding only the runtime's locked wheels
    (:mod:`packager.runtime_lock`), or ``runtime.requirements`` for a runtime the lock does not cover."""
    if runtime.python and not _python_ok(runtime.python, sys.version_info[:2]):
        raise EnvironmentProblem(
            f"{runtime.name} supports Python {runtime.python}; the host runs {platform.python_version()}",
            hint="run edgepack under a Python in that range, or pick another --runtime")
    locked, root = _host_root(runtime)
    python = root / "bin" / "python"
    env = _clean_env()
    note = ""
    from ..contain import lifecycle
    # one process makes (or mends) an environment at a time; another waits, then finds it made
    with lifecycle.exclusive(root.parent / f".{root.name}.lock", f"preparing the {runtime.name} environment",
                             progress):
        if (root / ".complete").is_file():
            changed = tampered(root)
            if changed:
                note = (f"the cached {runtime.name} environment was changed after edgepack made it ({changed}); "
                        "it was rebuilt")
                if progress:
                    progress(note)
                shutil.rmtree(root, ignore_errors=True)
        if not (root / ".complete").is_file():
            _create_venv(root, runtime, env, progress, locked)
    version = (root / ".complete").read_text().strip()
    try:
        held = tuple(json.loads((root / WHEELS).read_text()))
    except (OSError, ValueError):
        held = ()
    if not locked:
        note = "; ".join(filter(None, [note, f"{runtime.name} is not in packager/runtimes.lock.json: its environment "
                                              f"was installed from {' '.join(runtime.requirements)}"]))
    return RuntimeEnv(runtime.name, runtime.module, runtime.requirements, host_arch(), (str(python), "-s"),
                      env, version, note, held)


RECORD = ".edgepack-files.json"
_INTACT: set = set()


def record_files(root: Path) -> None:
    """Write ``root/RECORD``: the sha256 of every file below ``root`` and the target of every symbolic link,
    taken when edgepack made the environment (:func:`tampered` checks it before each use)."""
    (root / RECORD).write_text(json.dumps(_snapshot(root), sort_keys=True))


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel in (RECORD, ".complete"):
                continue
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tampered(root: Path) -> str:
    """What changed in the environment at ``root`` since :func:`record_files` (a file added, removed or
    changed: a ``.pth`` that every later run would import), or "" when intact. An environment without a
    record (made by an older edgepack) counts as changed. Checked once per process."""
    if str(root) in _INTACT:
        return ""
    try:
        want = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return "it has no record of its files"
    have = _snapshot(root)
    for rel in sorted(set(want) | set(have)):
        if want.get(rel) != have.get(rel):
            what = "added" if rel not in want else "removed" if rel not in have else "changed"
            return f"{rel} {what}"
    _INTACT.add(str(root))
    return ""


def locked_requirements_file(directory: Path, locked) -> Path:
    """Write ``directory/requirements.txt``: one ``name==version --hash=sha256:...`` line per locked wheel."""
    from .. import runtime_lock
    path = Path(directory) / "requirements.txt"
    path.write_text("\n".join(runtime_lock.requirement_lines([locked])) + "\n")
    return path


def _dists(argv: list, env: dict) -> dict:
    """{canonical name: version} of the distributions importable by the environment's Python (run from ``/``: the
    current directory, first on ``-c``'s sys.path, must not add a checkout's ``*.egg-info``)."""
    code = ("import json, importlib.metadata as m\n"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([*argv, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    try:
        raw = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    return {_canonical(k): v for k, v in raw.items() if k}


def _canonical(name: str) -> str:
    import re
    return re.sub(r"[-_.]+", "-", name).lower()


def check_holds(dists: dict, locked, where: str) -> None:
    """EnvironmentProblem unless every locked wheel's name and version is what the environment holds."""
    wrong = [f"{w['name']} {w['version']} (holds {dists.get(_canonical(w['name']), 'none')})" for w in locked
             if dists.get(_canonical(w["name"])) != w["version"]]
    if wrong:
        raise EnvironmentProblem(f"the {where} environment does not hold the locked wheels: {', '.join(wrong)}")


def _create_venv(root: Path, runtime: RuntimeProfile, env: dict, progress, locked: tuple = ()) -> None:
    if progress:
        progress(f"preparing the {runtime.name} environment (once; cached in {root.parent})")
    root.parent.mkdir(parents=True, exist_ok=True)
    from ..contain import lifecycle
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    lifecycle.register_dir(tmp)  # a killed edgepack leaves no half-made environment
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(tmp)], check=True, capture_output=True,
                       timeout=300, env=env, **lifecycle.popen_kwargs())
        what = (" ".join(f"{w['name']}=={w['version']}" for w in locked) + " (locked wheels)" if locked
                else " ".join(runtime.requirements))
        if progress:
            progress(f"installing {what} with pip")
        with lifecycle.temp_dir("edgepack-reqs-") as reqdir:
            args = (["--require-hashes", "--no-deps", "-r", str(locked_requirements_file(Path(reqdir), locked))]
                    if locked else list(runtime.requirements))
            rc, lines = _pip_install(tmp / "bin" / "python", args, env, progress)
        if rc != 0:
            errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
            tail = " ".join(errors[-2:])[-400:]
            raise EnvironmentProblem(f"cannot install {what}: {tail}",
                                     hint="check network access to the package index, or pick another --runtime")
        if locked:
            check_holds(_dists([str(tmp / "bin" / "python"), "-s"], env), locked, runtime.name)
        (tmp / WHEELS).write_text(json.dumps(list(locked), indent=1) + "\n")
        # The venv is used only as `bin/python -m ...`, which works after a rename (pyvenv.cfg sits
        # next to it); scripts with absolute shebangs (pip) are never called.
        probe = _probe([str(tmp / "bin" / "python"), "-s"], env)
        if probe["tensorflow"]:
            raise EnvironmentProblem(f"TensorFlow is importable in the {runtime.name} environment; refusing to use it")
        version = _installed_version([str(tmp / "bin" / "python")], env, runtime.name)
        record_files(tmp)
        (tmp / ".complete").write_text(version + "\n")
        if progress:
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file() and not f.is_symlink())
            progress(f"{runtime.name} {version} environment ready ({size / 1e6:.0f} MB)")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"creating the {runtime.name} environment timed out") from None
    except subprocess.CalledProcessError as exc:
        raise EnvironmentProblem(f"python -m venv failed: {(exc.stderr or b'').decode(errors='replace')[-300:]}",
                                 hint="install the venv module (apt-get install python3-venv)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lifecycle.unregister_dir(tmp)


def _pip_install(python: Path, requirements, env: dict, progress) -> tuple[int, list[str]]:
    """pip install, its output streamed to ``progress``: one step line per downloaded wheel with its
    size (`downloading numpy-1.26.4-...whl (18.3 MB)`), pip's other lines as details (they start
    with a capital letter: the terminal shows them on the live line, --verbose prints them)."""
    import threading

    from ..contain import lifecycle
    proc = subprocess.Popen([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                             "--progress-bar", "off", "--only-binary=:all:", *requirements],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            **lifecycle.popen_kwargs())
    timer = threading.Timer(PIP_TIMEOUT, proc.kill)
    timer.start()
    lines: list[str] = []
    started = time.monotonic()
    try:
        for raw in proc.stdout:
            line = raw.strip()
            if not line:
                continue
            lines = (lines + [line])[-50:]
            if not progress:
                continue
            if line.startswith(("Downloading ", "Using cached ", "Processing ")):
                what = {"D": "downloading ", "U": "from pip's cache: ", "P": "from a local file: "}[line[0]]
                progress(what + line.split(" ", 2 if line.startswith("U") else 1)[-1].split("/")[-1])
            elif line.startswith("Installing collected packages:"):
                progress("installing " + line.split(":", 1)[1].strip())
            else:
                progress(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    if rc != 0 and time.monotonic() - started >= PIP_TIMEOUT:
        raise subprocess.TimeoutExpired(str(python), PIP_TIMEOUT)
    return rc, lines


def arm64_env(runtime: RuntimeProfile, python_version: str, progress=None) -> RuntimeEnv:
    """An arm64 environment for ``runtime`` under qemu-user (prepared once, cached)."""
    from . import arm64
    suite = arm64.suite_for(python_version)
    if suite is None:
        raise EnvironmentProblem(
            f"arm64 emulation has no Python {python_version} (the target's): the Debian suites it runs under qemu ship "
            + ", ".join(f"{v} ({s})" for s, v in arm64.SUITE_PYTHON.items()),
            hint="verify on the device itself (`edgepack verify BUNDLE --reference MODEL --serial/--host DEVICE`), "
                 "or on this host's architecture (without --arch)")
    locked = _locked(runtime, python_version, "arm64")
    prepared = arm64.prepare_arm64_python(list(runtime.requirements), cache_dir=env_dir() / "arm64",
                                          python_version=python_version, suite=suite, progress=progress, wheels=locked)
    argv = list(getattr(prepared, "argv", prepared))
    extra = dict(getattr(prepared, "env", {}) or {})
    env = _clean_env(extra)
    version = _installed_version(argv, env, runtime.name)
    note = "" if locked else (f"{runtime.name} is not in packager/runtimes.lock.json: its arm64 environment was "
                              f"installed from {' '.join(runtime.requirements)}")
    return RuntimeEnv(runtime.name, runtime.module, runtime.requirements, "arm64", tuple(argv), env, version,
                      note, tuple(getattr(prepared, "wheels", ()) or ()))


def get_env(runtime: RuntimeProfile, arch: str | None = None, python_version: str = "3.11", progress=None) -> RuntimeEnv:
    """The environment for ``runtime`` on ``arch`` (host or arm64); EnvironmentProblem when it
    cannot be prepared, UsageError for an architecture that cannot be emulated."""
    arch = arch or host_arch()
    if arch == host_arch():
        return host_env(runtime, progress)
    if arch == "arm64":
        return arm64_env(runtime, python_version, progress)
    raise UsageError(f"cannot emulate architecture {arch!r}", hint=f"choose {host_arch()} or arm64")


# --------------------------------------------------------------------------- running
@dataclass
class DeviceRun:
    """One run of the device script: exit code, outputs keyed by output name, its one-line error, wall time."""
    ok: bool
    exit_code: int
    outputs: dict | None
    error: str | None
    seconds: float
    info: dict = field(default_factory=dict)


def env_paths(env: RuntimeEnv) -> list[str]:
    """What a runtime environment's Python reads: each path of its command (the interpreter, qemu, the arm64
    root filesystem), the environment directory holding it (``venv/bin/python`` -> ``venv``) and the
    interpreter it links to, and the paths of ``QEMU_LD_PREFIX``/``PYTHONHOME`` (not the rest of the host's
    environment: ``HOME`` would open ``~/.ssh``)."""
    found = []
    for item in list(env.argv) + [env.env[k] for k in ("QEMU_LD_PREFIX", "PYTHONHOME") if env.env.get(k)]:
        item = str(item)
        if "=" in item and not item.startswith("/"):      # qemu's -E PYTHONPATH=SITE
            item = item.split("=", 1)[1]
        for part in item.split(os.pathsep):
            if not part.startswith("/") or not os.path.exists(part):
                continue
            for p in (Path(part), Path(part).resolve()):
                found += [str(p)] + ([str(p.parent.parent)] if p.parent.name == "bin" else [])
    return list(dict.fromkeys(found))


def invoke_batch(inputs: dict) -> int:
    """Samples per invoke when verifying (``--batch``): at most 64, fewer for large inputs (~4 MiB of input per
    invoke, as the host-side check runs). The interpreter's arena grows with the batch: ResNet50 at the script's
    default of 64 took 3.3 GiB in tflite-runtime, the build's peak (issue 23); at 6 it takes a tenth."""
    from ..load.model import chunk_size
    return chunk_size([np.asarray(a) for a in inputs.values()], limit=64)


def run_device_script(env: RuntimeEnv, bundle: Path, inputs: dict, timeout: int = RUN_TIMEOUT) -> DeviceRun:
    """Run ``python3 <bundle>/<entrypoint> --input in.npz --output out.npz`` in ``env`` (this
    edgepack's own copy of the script when the bundle's differs: see :func:`bundle.host_entrypoint`)."""
    manifest = read_manifest(bundle)
    script = host_entrypoint(bundle, manifest)[0].resolve()
    from ..contain import lifecycle
    with lifecycle.temp_dir("edgepack-run-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        src.write_bytes(npz_stored(inputs))
        argv = [*env.argv, str(script), "--bundle", str(Path(bundle).resolve()), "--input", str(src),
                "--output", str(dst), "--runtime", env.module, "--batch", str(invoke_batch(inputs))]
        start = time.perf_counter()
        try:
            # the runtime reads the bundle and writes only below tmp: a model that exploits the
            # native runtime cannot write elsewhere on the host either (Landlock, where available)
            proc = subprocess.run(argv, capture_output=True, text=True, env=runtime_env(env), timeout=timeout,
                                  cwd=tmp, **lifecycle.popen_kwargs(confine_to=[tmp], readable=[
                                      str(Path(bundle).resolve()), str(script.parent), *env_paths(env)]))
        except subprocess.TimeoutExpired:
            return DeviceRun(False, -1, None, f"timed out after {timeout}s", time.perf_counter() - start)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err = _device_error(proc.stderr, proc.returncode)
            return DeviceRun(False, proc.returncode, None, err, seconds)
        with np.load(dst, allow_pickle=False) as npz:
            outputs = {k: npz[k] for k in npz.files}
        info = device_info(env, bundle)
        return DeviceRun(True, 0, outputs, None, seconds, info)


def runtime_env(env: RuntimeEnv) -> dict:
    """The environment of a device-script run: the runtime's, plus an address-space limit for the
    script's isolation child (``EDGEPACK_RUNTIME_MEMORY_MB`` on the host, default 4096 MiB)."""
    out = dict(env.env)
    out[RUNTIME_MEMORY_ENV] = os.environ.get(RUNTIME_MEMORY_ENV) or str(DEFAULT_RUNTIME_MEMORY_MB)
    return out


_INFO: dict = {}


def device_info(env: RuntimeEnv, bundle: Path) -> dict:
    """What the device script reports about its environment (CPU, Python, runtime); asked once
    per environment and process, since it cannot change between runs."""
    key = (env.argv, tuple(sorted(env.env.items())), env.module)
    if key not in _INFO:
        start = time.perf_counter()
        _INFO[key] = _ask_info(env, bundle)
        _START_UP[key] = time.perf_counter() - start
    return _INFO[key]


_START_UP: dict = {}


def start_up_seconds(env: RuntimeEnv) -> float:
    """How long the device script took here to start and import its runtime without running a model (its
    ``--info`` call, timed once per environment and process; 0 before it ran): the part of a run's wall time that
    does not grow with the samples."""
    return _START_UP.get((env.argv, tuple(sorted(env.env.items())), env.module), 0.0)


def _ask_info(env: RuntimeEnv, bundle: Path) -> dict:
    from ..contain import lifecycle
    manifest = read_manifest(bundle)
    proc = subprocess.run([*env.argv, str(host_entrypoint(bundle, manifest)[0]), "--info", "--runtime", env.module],
                          capture_output=True, text=True, env=env.env, timeout=300, **lifecycle.popen_kwargs())
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def _device_error(stderr: str, code: int) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("edgepack_run: error:"):
            return ln.split("error:", 1)[1].strip()
    meaning = _device_exit().get(code, f"exit code {code}" if code >= 0 else f"killed by signal {-code}")
    return f"{meaning}: {lines[-1][:300] if lines else 'no output'}"


# --------------------------------------------------------------------------- verification
@dataclass
class RuntimeResult:
    """One runtime's verdict: ``status`` passed | failed (outputs differ) | error (cannot run the model)
    | unavailable (its environment could not be prepared: a host problem), with per-output metrics."""
    runtime: str
    version: str
    arch: str
    status: RuntimeStatus            # PASSED | FAILED | ERROR | UNAVAILABLE (a str: "passed", ...)
    error: str | None = None
    metrics: list[OutputMetrics] = field(default_factory=list)
    seconds: float = 0.0
    machine: str | None = None
    python: str | None = None
    static_problems: list[str] = field(default_factory=list)
    numpy: str | None = None
    wheels: list = field(default_factory=list)    # the locked wheels of the environment the verdict ran in
    #: how its outputs were had when not all from its own run: a sentence for the verdict's notes (not in to_json)
    evidence: str | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        """JSON of the verdict: runtime, version, arch, machine, python, numpy, status, error, seconds (rounded to
        ms), static problems and each output's metrics."""
        return {"runtime": self.runtime, "version": self.version, "arch": self.arch, "machine": self.machine,
                "python": self.python, "numpy": self.numpy, "status": RuntimeStatus(self.status).value,
                "error": self.error, "seconds": round(self.seconds, 3), "static_problems": self.static_problems,
                "outputs": [m.to_json() for m in self.metrics],
                "wheels": [{k: w[k] for k in ("name", "version", "filename", "sha256")} for w in self.wheels]}


def verify_in_env(env: RuntimeEnv, bundle: Path, inputs, reference, tol,
                  labels=None, static_problems: list[str] | None = None, use_cache: bool = False,
                  noise: dict | None = None, steps: dict | None = None,
                  host_outputs: dict | None = None) -> RuntimeResult:
    """Run the bundle in ``env`` and compare with the reference outputs.

    ``inputs``/``reference`` are one dict each, or aligned lists of dicts (one group per length of
    a variable-length axis; every group is run and the metrics merged, worst first). ``tol`` is a
    Tolerance or {output name: Tolerance}. With ``use_cache``, the outputs of an identical run
    (same model bytes, device script, inputs and environment) are reused; the comparison is not.
    ``host_outputs``: the conversion check's outputs of this model on the first group (in-process ai-edge-litert,
    :func:`packager.convert.converter.run_tflite`): see :func:`_smoke_then_host`."""
    groups = inputs if isinstance(inputs, list) else [inputs]
    references = reference if isinstance(reference, list) else [reference]
    manifest = read_manifest(bundle)
    scales = steps if steps is not None else {t.name: t.scale for t in manifest.outputs if t.quantized}
    result = RuntimeResult(env.runtime, env.version, env.arch, RuntimeStatus.ERROR, static_problems=list(static_problems or []),
                           wheels=list(env.wheels))
    outputs = []
    for k, group in enumerate(groups):
        run = None
        if k == 0 and len(groups) == 1 and host_outputs:
            run = _smoke_then_host(env, bundle, manifest, group, host_outputs, use_cache, result)
        run = run or _run_cached(env, bundle, manifest, group, use_cache)
        result.seconds += run.seconds
        if not run.ok:
            result.error = run.error
            return result
        result.machine, result.python = run.info.get("machine"), run.info.get("python")
        result.numpy = run.info.get("numpy")
        outputs.append(run.outputs)
    return judge(result, groups, references, outputs, tol, scales, labels, noise)


def judge(result: RuntimeResult, groups: list, references: list, outputs: list, tol, scales: dict,
          labels=None, noise: dict | None = None) -> RuntimeResult:
    """Fill ``result`` (status, metrics) from the outputs one runtime computed on each group of inputs: the criteria
    of :mod:`packager.compare` against ``references`` (aligned lists of dicts keyed by output name; ``labels`` and
    ``noise`` belong to the first group). The same judgement for the emulator and for a real device."""
    measured = [compare_all(ref, out, tol, scales, labels if k == 0 else None, noise if k == 0 else None)
                for k, (ref, out) in enumerate(zip(references, outputs))]
    labels_of = ["length " + "x".join(str(d) for d in next(iter(g.values())).shape[1:]) for g in groups]
    result.metrics = merge_metrics(measured, labels_of)
    result.status = RuntimeStatus.PASSED if all(m.passed for m in result.metrics) else RuntimeStatus.FAILED
    return result


HOST_CHECK_RUNTIME = "ai-edge-litert"     # the runtime the conversion check runs in-process (converter.run_tflite)


def host_check_version() -> str | None:
    """The version of the runtime the conversion check ran in this host's own Python, None if not installed."""
    from importlib import metadata
    try:
        return metadata.version(HOST_CHECK_RUNTIME)
    except metadata.PackageNotFoundError:
        return None


def _smoke_then_host(env: RuntimeEnv, bundle: Path, manifest: Manifest, inputs: dict, host_outputs: dict,
                     use_cache: bool, result: RuntimeResult) -> DeviceRun | None:
    """The conversion check already ran this very model on these inputs in this host's ai-edge-litert: when ``env``
    holds the same runtime at the same version on this architecture, the bundle's own script runs only its first
    invoke (``--batch`` samples) there, and when those outputs are bit-identical to the check's first rows, the
    check's outputs on every sample stand for this runtime's (issue 23: one run of the model fewer). The environment
    run stays the evidence that the bundle's script runs where only the locked runtime is installed; the verdict
    says which evidence it used (``result.evidence``). None (run every sample, as before) when not applicable or
    not bit-identical."""
    n = len(next(iter(inputs.values())))
    first = min(n, invoke_batch(inputs))
    if (env.runtime != HOST_CHECK_RUNTIME or env.arch != host_arch() or not env.version
            or env.version != host_check_version() or first >= n
            or any(len(v) < n for v in host_outputs.values())):
        return None
    run = _run_cached(env, bundle, manifest, {k: v[:first] for k, v in inputs.items()}, use_cache)
    if not run.ok:
        return run
    same = set(run.outputs) == set(host_outputs) and all(
        np.asarray(run.outputs[k]).dtype == np.asarray(host_outputs[k]).dtype
        and np.asarray(run.outputs[k]).shape == np.asarray(host_outputs[k])[:first].shape
        and np.asarray(run.outputs[k]).tobytes() == np.ascontiguousarray(np.asarray(host_outputs[k])[:first]).tobytes()
        for k in run.outputs)
    if not same:
        result.evidence = (f"{env.runtime} {env.version}: the bundle's script gave outputs on the first {first} samples "
                           "that are not bit-identical to the in-process conversion check's (the same version), so "
                           "its verdict rests on its own run of every sample")
        return None
    result.evidence = (f"{env.runtime} {env.version}: judged on the conversion check's outputs "
                       f"(this host's in-process {HOST_CHECK_RUNTIME} {env.version}, the same version); the bundle's "
                       f"own script ran the first {first} in the {env.runtime} environment (only the locked runtime "
                       "installed) and its outputs were bit-identical")
    return DeviceRun(True, 0, {k: np.asarray(v)[:n] for k, v in host_outputs.items()}, None, run.seconds, run.info)


def run_for_verdict(env: RuntimeEnv, bundle: Path, manifest: Manifest, inputs: dict, count: int,
                    host_outputs: dict | None, use_cache: bool, result: RuntimeResult) -> tuple[DeviceRun, bool]:
    """(the outputs of the first ``count`` samples of ``inputs`` in ``env``, whether they are the conversion check's
    ``host_outputs`` after a bit-identical smoke run: :func:`_smoke_then_host`, which says so in ``result``)."""
    head = {k: v[:count] for k, v in inputs.items()}
    whole = len(next(iter(inputs.values())))
    if host_outputs and all(len(v) >= whole for v in host_outputs.values()):    # may stand for every sample
        run = _smoke_then_host(env, bundle, manifest, head, host_outputs, use_cache, result)
        if run is not None:
            return run, run.ok
    return _run_cached(env, bundle, manifest, head, use_cache), False


def _run_cached(env: RuntimeEnv, bundle: Path, manifest: Manifest, inputs: dict, use_cache: bool) -> DeviceRun:
    key = None
    if use_cache:
        from . import cache
        key = cache.verification_key(env, bundle, manifest, inputs)
        hit = cache.load_outputs(key)
        if hit is not None:
            return DeviceRun(True, 0, hit[0], None, 0.0, hit[1])
    run = run_device_script(env, bundle, inputs)
    if key is not None and run.ok:
        cache.save_outputs(key, run.outputs, run.info)
    return run
