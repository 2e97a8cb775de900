"""The verdict on the device: the inputs go to a device, the deployed release's own script runs them there in the
device's own environment, the outputs come back and are judged on the host by exactly the criteria of the emulator
(:func:`packager.verification.emulator.judge`).

    DIR/.verify-<token>/in.npz, out.npz   one chunk at a time (``EDGEPACK_DEVICE_CHUNK_MB``, default 8 MiB of
                                          inputs), checksummed both ways; the directory is removed afterwards

What the verdict rests on is a :class:`Material` (inputs per group, the reference outputs, tolerances, output steps,
labels, float noise): computed once on the host (with TensorFlow, from the reference model) and saved as ``.npz`` and
JSON (never pickle), so the fleet's Ansible workers judge each host without TensorFlow.

Before running, the release's files are checksummed on the device against the bundle: a model file changed on the
device, or another bundle in ``current``, is a failure with its cause, not a verdict on something else.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..lazynp import np

from ..bundle.files import Bundle, npz_stored, sha256_file
from ..bundle.manifest import RuntimeStatus
from ..errors import DeployError, UsageError, VerificationError
from ..recipes import Tolerance
from ..verification.emulator import RuntimeResult, judge
from . import releases
from .base import Transport, q, transfer_timeout

CHUNK_ENV = "EDGEPACK_DEVICE_CHUNK_MB"
DEFAULT_CHUNK_MB = 8.0
Progress = Callable[[str, str], None]
_Y = "__y__"           # the key of the shared labels ``y`` (labels[None]) in labels.npz


# =========================================================================== what the verdict rests on
@dataclass
class Material:
    """Everything a verdict needs besides the device's outputs: ``groups`` of inputs (dicts keyed by input name, first
    axis = samples), ``references`` (the original model's outputs on each group), ``tolerance`` ({output:
    :class:`Tolerance`}, output kinds settled), ``steps`` ({output: quantization step}), ``labels`` ({None | output:
    array} for the first group), ``noise`` ({output: float noise per column}) and the ``evidence`` (source, count,
    kind, text) of the inputs."""
    groups: list
    references: list
    tolerance: dict
    steps: dict = field(default_factory=dict)
    labels: dict | None = None
    noise: dict | None = None
    evidence: dict = field(default_factory=dict)
    on_device: dict = field(default_factory=dict)   # {group: path inside the release} of inputs already there

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the material into ``directory`` (created): ``inputs-K.npz``, ``references-K.npz``, ``labels.npz``,
        ``noise.npz`` and ``material.json``. Returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for k, (g, r) in enumerate(zip(self.groups, self.references)):
            (d / f"inputs-{k}.npz").write_bytes(npz_stored(g))
            (d / f"references-{k}.npz").write_bytes(npz_stored(r))
        if self.labels:
            (d / "labels.npz").write_bytes(npz_stored({_Y if k is None else k: v for k, v in self.labels.items()}))
        if self.noise:
            (d / "noise.npz").write_bytes(npz_stored({k: np.asarray(v) for k, v in self.noise.items()}))
        (d / "material.json").write_text(json.dumps({
            "groups": len(self.groups), "steps": self.steps, "evidence": self.evidence,
            "on_device": {str(k): v for k, v in self.on_device.items()},
            "tolerance": {n: dataclasses.asdict(t) for n, t in self.tolerance.items()}}))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Material":
        """Read what :meth:`save` wrote (``allow_pickle=False``). Raises UsageError when it is incomplete."""
        d = Path(directory)
        try:
            meta = json.loads((d / "material.json").read_text())
            n = int(meta["groups"])
            groups = [_npz(d / f"inputs-{k}.npz") for k in range(n)]
            refs = [_npz(d / f"references-{k}.npz") for k in range(n)]
            labels = {None if k == _Y else k: v for k, v in _npz(d / "labels.npz").items()} \
                if (d / "labels.npz").is_file() else None
            noise = _npz(d / "noise.npz") if (d / "noise.npz").is_file() else None
            tol = {name: Tolerance(**rec) for name, rec in meta["tolerance"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"verification material in {d} is incomplete: {exc}") from None
        return cls(groups, refs, tol, {k: float(v) for k, v in (meta.get("steps") or {}).items()}, labels, noise,
                   meta.get("evidence") or {}, {int(k): str(v) for k, v in (meta.get("on_device") or {}).items()})


def _npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# =========================================================================== the device's side
@dataclass
class DeviceOutputs:
    """What one device computed: ``outputs`` per group (dicts keyed by output name), the device's facts
    (``info``: device, release, machine, os, cpu, cores, python, numpy, runtime, runtime_version, threads), the
    ``release`` that ran and its ``remote_dir``, ``chunks`` sent, ``bytes_sent`` and wall time in ``seconds``."""
    outputs: list
    info: dict
    release: str
    remote_dir: str
    chunks: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


def chunk_rows(group: dict, limit_bytes: int) -> list[slice]:
    """Row ranges of ``group`` (inputs sharing a first axis) whose inputs take at most ``limit_bytes`` each (at least
    one row per chunk)."""
    n = len(next(iter(group.values())))
    per_row = max(1, sum(int(np.asarray(v)[:1].nbytes) for v in group.values()))
    step = max(1, int(limit_bytes // per_row))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)] or [slice(0, 0)]


def chunk_bytes() -> int:
    """Bytes of inputs sent per device run: ``EDGEPACK_DEVICE_CHUNK_MB`` (MiB, default 8)."""
    raw = os.environ.get(CHUNK_ENV) or str(DEFAULT_CHUNK_MB)
    try:
        mb = float(raw)
    except ValueError:
        raise UsageError(f"{CHUNK_ENV}={raw!r} is not a number of MiB") from None
    if not mb > 0:
        raise UsageError(f"{CHUNK_ENV}={raw!r} must be positive")
    return int(mb * (1 << 20))


def check_release(st, bundle: Bundle, release: str | None, device: str, address: str = "") -> str:
    """The release to run (``release``, else ``current``), after checking that its files on the device are this
    bundle's (sha256 computed there). Raises DeployError when nothing or another bundle is there, VerificationError
    when a file of this bundle's release was changed on the device."""
    rid = release or st.current
    deploy_cmd = " ".join(x for x in ("edgepack deploy", str(bundle.path), address, f"--remote-dir {q(st.dir)}"
                                      if not address.startswith("--local") else "") if x)
    if rid is None:
        raise DeployError(f"nothing is deployed in {st.dir} on {device}",
                          hint=f"deploy the bundle first: {deploy_cmd}")
    if rid not in st.releases:
        raise UsageError(f"release {rid} is not on {device} (it has: {', '.join(st.releases) or 'none'})")
    if not rid.endswith("-" + bundle.model_sha256[:12]):
        raise DeployError(f"{'release ' + rid if release else 'the current release (' + rid + ')'} on {device} holds "
                          f"another model (sha256 {rid.rsplit('-', 1)[1]}..., this bundle's is "
                          f"{bundle.model_sha256[:12]}...)",
                          hint=f"deploy this bundle first ({deploy_cmd}), or pass --release ID")
    problems = releases._mismatches(bundle.wanted, {rel: h for (r, rel), h in st.hashes.items() if r == rid})
    if problems:
        raise VerificationError(f"release {rid} on {device} is not this bundle any more: {'; '.join(problems)} "
                                "(changed on the device after the deploy); nothing was run",
                                hint=f"redeploy it ({deploy_cmd}), and find out what changed it")
    return rid


_INFO_SCRIPT = r"""
{py} {entry} --info{rt} || exit $?
echo "OS=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -sr)"
echo "KERNEL=$(uname -sr)"
echo "CPU=$(grep -m1 -E '^(model name|Model|Hardware)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
echo "CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
"""


def device_facts(transport: Transport, release_dir: str, python: str, entry: str, runtime: str | None) -> dict:
    """The device's facts as its own script and sh see them: machine, python, numpy, runtime, runtime_version (from
    ``--info``), os, kernel, cpu, cores. Raises DeployError when the script cannot start."""
    py = releases._python_token(transport, python)
    rt = f" --runtime {q(runtime)}" if runtime else ""
    res = transport.sh(_INFO_SCRIPT.format(py=py, entry=q(release_dir + "/" + entry), rt=rt), timeout=max(120.0, transport.timeout))
    info = releases._last_json(res.out.split("\nOS=")[0]) if res.rc == 0 else None
    if info is None:
        raise releases.script_error(res, python, "the device script's --info")
    for line in res.out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("OS", "KERNEL", "CPU", "CORES") and value.strip():
            info[key.lower()] = value.strip()
    return info


def run_groups(transport: Transport, remote_dir: str, bundle: Bundle, groups: list, *, release: str | None = None,
               device_python: str | None = None, runtime: str | None = None, threads: int | None = None,
               progress: Progress | None = None, on_device: dict | None = None) -> DeviceOutputs:
    """Run every group of inputs through release ``release`` (default: ``current``) of ``bundle`` in ``remote_dir``
    on the device, in chunks of :func:`chunk_bytes`, and bring the outputs back (checksummed both ways).
    ``runtime`` (``ai_edge_litert``/``tflite_runtime``) makes the script use that runtime; ``threads`` its thread
    count; ``on_device`` ({group: path inside the release}) names groups whose inputs are already there (the
    bundled samples: checksummed with the release, not sent). Nothing is left on the device but the release.
    Raises DeployError/VerificationError/UsageError."""
    started = time.monotonic()
    st = releases._open(transport, remote_dir, hash_files=list(bundle.wanted))
    rdir = st.dir
    rid = check_release(st, bundle, release, transport.describe(), transport.cli_address())
    rel_dir = f"{rdir}/releases/{rid}"
    entry = bundle.manifest.entrypoint
    python = device_python or st.default_python(bundle.manifest)
    releases._notify(progress, "device", f"release {rid}, {python}")
    info = device_facts(transport, rel_dir, python, entry, runtime)
    info.update(device=transport.describe(), release=rid, device_python=python, threads=threads)
    py = releases._python_token(transport, python)
    args = (f" --threads {int(threads)}" if threads else "") + (f" --runtime {q(runtime)}" if runtime else "")
    limit = chunk_bytes()
    on_device = on_device or {}
    plan = [(k, s) for k, g in enumerate(groups) for s in ([None] if k in on_device else chunk_rows(g, limit))]
    work = f"{rdir}/.verify-{secrets.token_hex(6)}"
    outputs: list[list[dict]] = [[] for _ in groups]
    sent = 0
    try:
        releases._check(transport.sh(f"mkdir -p {q(work)}"), "creating a work directory", transport)
        with tempfile.TemporaryDirectory(prefix="edgepack-ondevice-") as tmp:
            local_in, local_out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            for i, (k, rows) in enumerate(plan, 1):
                if rows is None:            # inputs shipped in the release
                    releases._notify(progress, "run", f"{on_device[k]} of release {rid}")
                    res = transport.sh(f"cd {q(work)} && {py} {q(rel_dir + '/' + entry)} --input "
                                       f"{q(rel_dir + '/' + on_device[k])} --output out.npz{args} && sha256sum out.npz",
                                       timeout=max(releases.SMOKE_TIMEOUT, transport.timeout))
                    outputs[k].append(_fetch(transport, res, work, local_out, python))
                    continue
                chunk = {name: np.asarray(a)[rows] for name, a in groups[k].items()}
                local_in.write_bytes(npz_stored(chunk))
                size = local_in.stat().st_size
                n = len(next(iter(chunk.values())))
                releases._notify(progress, "run", f"chunk {i}/{len(plan)}: {n} samples ({size / 1e6:.1f} MB)"
                                 + (f", group {k + 1}/{len(groups)}" if len(groups) > 1 else ""))
                transport.upload([(local_in, "in.npz")], work, timeout=transfer_timeout(size, transport.timeout))
                sent += size
                res = transport.sh(
                    f"cd {q(work)} && sha256sum in.npz && {py} {q(rel_dir + '/' + entry)} --input in.npz "
                    f"--output out.npz{args} && sha256sum out.npz",
                    timeout=max(releases.SMOKE_TIMEOUT, transport.timeout) + transfer_timeout(size, 0))
                sums = {m[2]: m[1] for m in map(releases._SHA_LINE.match, res.out.splitlines()) if m}
                if sums.get("in.npz") not in (None, sha256_file(local_in)):
                    raise DeployError("the inputs arrived damaged on the device (checksum mismatch)", hint="run again")
                outputs[k].append(_fetch(transport, res, work, local_out, python))
                releases._check(transport.sh(f"rm -f {q(work)}/in.npz {q(work)}/out.npz"), "cleaning up", transport)
    finally:
        releases._cleanup(transport, f"rm -rf {q(work)}")
    joined = [{name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else {}
              for parts in outputs]
    return DeviceOutputs(joined, info, rid, rdir, chunks=len(plan), bytes_sent=sent,
                         seconds=time.monotonic() - started)


def _fetch(transport: Transport, res, work: str, local_out: Path, python: str) -> dict:
    """The outputs of one run (``res``: its sh result, ending with ``sha256sum out.npz``), brought back and checked."""
    releases.fetch_outputs(transport, res, f"{work}/out.npz", local_out, python,
                           max(releases.SMOKE_TIMEOUT, transport.timeout))
    return _npz(local_out)


# =========================================================================== the verdict
def _arch(machine: str | None) -> str:
    m = (machine or "").lower()
    return {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}.get(m, m)


def differences(info: dict, verified: list) -> list[str]:
    """How the device differs from what the bundle was verified with (``verified``: the manifest's verification
    runtimes, each with runtime, version, arch, python, numpy): another runtime or version, another numpy major,
    another CPU architecture. [] when it is one of them, or when the manifest records none."""
    if not verified:
        return []
    name = (info.get("runtime") or "").replace("_", "-")
    version = info.get("runtime_version")
    same = [v for v in verified if v.get("runtime") == name and v.get("status") in ("passed", None)]
    out = []
    def described(runtime, ver) -> str:        # "tflite-runtime 2.14.0", or just the name when the version is unknown
        return " ".join(str(p) for p in (runtime or "?", ver) if p)
    if not same:
        out.append(f"its runtime {described(name, version)} is not one the bundle was verified with "
                   f"({', '.join(sorted({described(v.get('runtime'), v.get('version')) for v in verified}))})")
    elif version and not any(v.get("version") == version for v in same):
        out.append(f"it runs {name} {version}; the bundle was verified with {name} "
                   f"{', '.join(sorted({str(v.get('version')) for v in same}))}")
    arches = {_arch(v.get("arch")) for v in verified if v.get("arch")}
    if arches and _arch(info.get("machine")) not in arches:
        out.append(f"its CPU is {info.get('machine')}; the bundle was verified on {', '.join(sorted(arches))}")
    numpys = {str(v.get("numpy")).split(".")[0] for v in same or verified if v.get("numpy")}
    if numpys and info.get("numpy") and str(info["numpy"]).split(".")[0] not in numpys:
        out.append(f"it has numpy {info['numpy']}; the bundle was verified with numpy "
                   f"{', '.join(sorted(n + '.x' for n in numpys))}")
    return out


def verify_device(transport: Transport, remote_dir: str, bundle: Bundle, material: Material, *,
                  release: str | None = None, device_python: str | None = None, runtime: str | None = None,
                  threads: int | None = None, progress: Progress | None = None) -> tuple[RuntimeResult, DeviceOutputs]:
    """Run ``material``'s inputs on the device (:func:`run_groups`) and judge the outputs with the emulator's criteria
    (:func:`~packager.verification.emulator.judge`). Returns the device's RuntimeResult (runtime and version as
    the device reports them, arch = its machine) and what the device computed."""
    ran = run_groups(transport, remote_dir, bundle, material.groups, release=release, device_python=device_python,
                     runtime=runtime, threads=threads, progress=progress, on_device=material.on_device)
    info = ran.info
    result = RuntimeResult((info.get("runtime") or "?").replace("_", "-"), str(info.get("runtime_version") or ""),
                           _arch(info.get("machine")), RuntimeStatus.ERROR, machine=info.get("machine"),
                           python=info.get("python"), numpy=info.get("numpy"), seconds=ran.seconds)
    missing = [n for n in material.references[0] if n not in (ran.outputs[0] if ran.outputs else {})]
    if missing:
        result.error = f"the device's outputs lack {', '.join(missing)}"
        return result, ran
    judge(result, material.groups, material.references, ran.outputs, material.tolerance, material.steps,
          material.labels, material.noise)
    return result, ran


def odd_ones_out(outputs: dict) -> dict:
    """Devices whose outputs differ from the others': ``outputs`` = {device: [group dicts]}. The largest set of
    devices with identical outputs is the norm; every other device is named with the first output that differs
    from the norm and by how much: {device: {"output", "max_abs_diff", "differing": fraction of values, "norm":
    [devices]}}. {} when all agree (or fewer than two devices ran)."""
    devices = [d for d, o in outputs.items() if o]
    if len(devices) < 2:
        return {}

    def same(a, b) -> bool:
        return len(a) == len(b) and all(ga.keys() == gb.keys() and all(
            ga[n].shape == gb[n].shape and np.array_equal(ga[n], gb[n]) for n in ga) for ga, gb in zip(a, b))

    classes: list[list[str]] = []
    for d in devices:
        for c in classes:
            if same(outputs[c[0]], outputs[d]):
                c.append(d)
                break
        else:
            classes.append([d])
    if len(classes) == 1:
        return {}
    norm = max(classes, key=len)
    if sum(len(c) == len(norm) for c in classes) > 1:      # no majority: every device is compared with the first
        norm = classes[0]
    base = outputs[norm[0]]
    out = {}
    for c in classes:
        if c is norm:
            continue
        for d in c:
            for gb, gd in zip(base, outputs[d]):
                name = next((n for n in gb if n not in gd or gb[n].shape != gd[n].shape
                             or not np.array_equal(gb[n], gd[n])), None)
                if name is None:
                    continue
                if name not in gd or gb[name].shape != gd[name].shape:
                    out[d] = {"output": name, "max_abs_diff": None, "differing": 1.0, "norm": list(norm)}
                else:
                    diff = np.abs(gd[name].astype(np.float64) - gb[name].astype(np.float64))
                    out[d] = {"output": name, "max_abs_diff": float(np.max(diff)) if diff.size else 0.0,
                              "differing": float(np.mean(diff > 0)) if diff.size else 0.0, "norm": list(norm)}
                break
    return out


# =========================================================================== smoke run and the deploy gate
def sample_material(bundle: Bundle) -> Material:
    """The bundled samples as verification material: their inputs, and as the reference the outputs the converted
    model gave on them when the bundle was built (``samples/expected.npz``), judged with the tolerance and output
    kinds recorded in the manifest. Raises UsageError when the bundle has no samples."""
    from device_runtime.edgepack_run import Failure, read_inputs
    from ..recipes import get_recipe
    m = bundle.manifest
    if not m.samples or not m.expected:
        raise UsageError(f"{bundle.name} has no bundled samples to smoke-test with",
                         hint="rebuild it (build writes samples/), or deploy without --smoke")
    try:
        inputs = read_inputs(str(bundle.local(m.samples)), [t.to_json() for t in m.inputs])
        expected = read_inputs(str(bundle.local(m.expected)), [t.to_json() for t in m.outputs])
    except Failure as exc:
        raise UsageError(f"the bundle's samples are unreadable: {exc.message}") from None
    try:
        base = get_recipe(m.recipe).tolerance
    except Exception:  # noqa: BLE001 - an unknown recipe: the defaults of Tolerance
        base = Tolerance(1e-5, 1e-5, 1.0, 0.999)
    recorded = m.tolerance
    tol = {n: Tolerance.from_record(recorded.get(n) or {}, base) for n in expected}
    steps = {t.name: t.scale for t in m.outputs if t.quantized}
    return Material([inputs], [expected], tol, steps, None, None,
                    {"source": m.samples, "count": len(next(iter(inputs.values()))), "kind": "samples",
                     "text": f"bundled samples, n={len(next(iter(inputs.values())))}"}, {0: m.samples})


def verdict_line(result: RuntimeResult) -> str:
    """``MATCH: decisions 16/16, ...`` / ``MISMATCH: probs: <reasons>`` / ``ERROR: <why>`` for one device's result."""
    if result.status == RuntimeStatus.ERROR or result.status == "error":
        return f"UNVERIFIED: {result.error}"
    from ..verification.report import _rests_on
    if result.status == "passed":
        return "MATCH: " + ", ".join(_rests_on(result.metrics))
    return "MISMATCH: " + "; ".join(f"{m.name}: {'; '.join(m.reasons)}" for m in result.metrics if not m.passed)


def record_script(rdir: str, release: str, rc: int, error: str | None, report: dict) -> str:
    """Write DIR/selftest.last (RELEASE=, AT=, RC=, ERROR=, REPORT= lines; read by :func:`releases.last_selftest` and
    ``fleet status``) atomically."""
    d = q(rdir)
    lines = [f"RELEASE={release}", f"RC={int(rc)}", "ERROR=" + " ".join(str(error or "").split()),
             "REPORT=" + json.dumps(report, separators=(",", ":"), default=str)]
    body = "\n".join(lines)
    return (f'{{ printf "%s\\n" {q(body)}; echo "AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; }} >{d}/.selftest.tmp '
            f"&& mv -f {d}/.selftest.tmp {d}/{releases.SELFTEST_RECORD}")


def gate(transport: Transport, rdir: str, bundle: Bundle, release: str, python: str, runtime: str | None,
         material: Material, what: str, progress: Progress | None = None):
    """Judge release ``release`` on the device with ``material`` (the bundled samples for ``--smoke``, held-out data
    for a gated rollout) and record the outcome in DIR/selftest.last. Returns (:class:`releases.SelfTest`, failure
    text or None)."""
    try:
        result, ran = verify_device(transport, rdir, bundle, material, release=release, device_python=python,
                                    runtime=runtime, progress=progress)
        info = ran.info
    except (DeployError, VerificationError) as exc:
        _record(transport, rdir, release, getattr(exc, "device_rc", 5), exc.message,
                {"passed": False, "verdict": "UNVERIFIED", "what": what})
        return None, exc.message
    line = verdict_line(result)
    outputs = {m.name: {"passed": m.passed, "kind": m.kind, "reasons": list(m.reasons)} for m in result.metrics}
    report = {"passed": result.status == "passed", "verdict": line.split(":", 1)[0], "line": line, "what": what,
              "evidence": material.evidence.get("text"), "outputs": outputs,
              **{k: info.get(k) for k in ("machine", "python", "numpy", "runtime", "runtime_version")}}
    passed = result.status == "passed"
    _record(transport, rdir, release, 0 if passed else 6, None if passed else line, report)
    return releases.SelfTest(passed, outputs, report), None if passed else line


def _record(transport: Transport, rdir: str, release: str, rc: int, error: str | None, report: dict) -> None:
    releases._cleanup(transport, record_script(rdir, release, rc, error, report))


releases.GATES.update(samples=sample_material, judge=gate)
