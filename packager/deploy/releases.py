"""The release protocol, the same over every transport (docs/bundle-format.md, "Device layout").

    DIR/releases/<id>/    one verified bundle per release; id = <UTC yyyymmddThhmmssZ>-<12 hex of model_sha256>
    DIR/current -> releases/<id>     switched atomically (symlink to a temporary name, then rename over)
    DIR/.staging-<id>/    upload target; becomes releases/<id> only after every file's sha256,
                          computed by the device's own sha256sum, matches the manifest
    DIR/venv/             (ssh, --install) the runtime environment built from requirements.txt

Nothing on the device is trusted that was not checksummed there: a cut-off or lying transfer leaves
``current`` untouched. Files whose content already exists in a release on the device are hard-linked
(or copied) there instead of being sent again, so redeploying an unchanged bundle sends nothing.
Every remote command is assembled from ``shlex.quote``d values; bundle and file names are validated.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

from ..bundle.files import Bundle, check_part, check_relpath, load_bundle, sha256_file  # noqa: F401 - re-exported
from ..bundle.manifest import check_name
from ..errors import DeployError, UsageError
from .base import Completed, Transport, q, transfer_timeout

RELEASE_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}\Z")
_SHA_LINE = re.compile(r"^\\?([0-9a-f]{64}) [ *](.+)$")
INSTALL_TIMEOUT = 1800.0
SMOKE_TIMEOUT = 300.0

Progress = Callable[[str, str], None]


# =========================================================================== results
@dataclass(frozen=True)
class SelfTest:
    """A verdict computed on the device after a switch (:func:`packager.deploy.ondevice.gate`): ``passed``, per output
    {passed, kind, reasons}, and the ``report`` (verdict, line, evidence, machine, python, numpy, runtime) that
    DIR/selftest.last records."""

    passed: bool
    outputs: dict
    report: dict


@dataclass(frozen=True)
class DeployResult:
    """What ``deploy`` did on ``device`` in ``remote_dir`` (resolved, absolute): the ``release`` now current and the
    ``previous`` one, whether anything ``changed``, files ``uploaded`` and ``reused`` (relative paths),
    ``bytes_sent`` over the link, releases ``pruned``, whether a venv was ``installed``, the ``device_python`` used,
    the ``smoke`` self-test (None when not run) and the wall time in ``seconds``."""
    device: str
    remote_dir: str
    release: str                      # the release now current
    previous: str | None              # the release that was current before (None on a first deploy)
    changed: bool                     # False: identical content was already current, nothing switched
    uploaded: tuple[str, ...]         # files sent over the link
    reused: tuple[str, ...]           # files linked/copied from a release already on the device
    bytes_sent: int                   # file bytes over the link (tar/adb payload), not protocol chatter
    pruned: tuple[str, ...]
    installed: bool
    device_python: str | None
    smoke: SelfTest | None
    seconds: float
    verdict: SelfTest | None = None   # the gate on held-out data (``verify``): the device's verdict


@dataclass(frozen=True)
class RollbackResult:
    """What ``rollback`` did on ``device``: ``current`` in ``remote_dir`` (resolved, absolute) moved from
    ``from_release`` (None when nothing was current) to ``to_release``."""
    device: str
    remote_dir: str
    from_release: str | None
    to_release: str


@dataclass(frozen=True)
class ReleaseInfo:
    """One release on the device: its ``id``, ``created`` (ISO 8601 UTC, read from the id), the first 12 hex digits
    of its model's sha256, and whether it is ``current``."""
    id: str
    created: str                      # ISO 8601 UTC, from the id
    model_sha256_prefix: str
    current: bool


@dataclass(frozen=True)
class StatusResult:
    """What ``status`` found on ``device`` in ``remote_dir`` (resolved, absolute): whether it ``exists``, the
    ``current`` and ``previous`` releases, every release, the bundle ``name`` and ``model_sha256`` from current's
    manifest, whether current's files match it (``verified``; None when not checked), the ``problems`` found, and
    whether DIR/venv exists (``venv``)."""
    device: str
    remote_dir: str
    exists: bool
    current: str | None
    previous: str | None
    releases: tuple[ReleaseInfo, ...]
    name: str | None                  # bundle name of the current release
    model_sha256: str | None
    verified: bool | None             # current's files match its manifest (None: nothing to verify)
    problems: tuple[str, ...]
    venv: bool


@dataclass(frozen=True)
class RunResult:
    """What ``run`` did with the current ``release``: the ``device_python`` used (None for benchmark_model), the
    local ``output`` file of an ``--input`` run or the ``benchmark`` JSON (times in milliseconds), and the wall time
    in ``seconds``."""
    device: str
    remote_dir: str
    release: str
    device_python: str | None
    output: Path | None               # local file with the outputs (--input)
    benchmark: dict | None            # --benchmark JSON (device script or benchmark_model)
    seconds: float


# =========================================================================== device state
@dataclass
class _State:
    dir: str
    home: str = ""
    exists: bool = False
    current: str | None = None
    current_raw: str | None = None
    releases: list[str] = field(default_factory=list)
    hashes: dict = field(default_factory=dict)      # (release, relpath) -> hex
    venv: bool = False
    manifest: dict | None = None                    # current/manifest.json when asked for
    manifest_error: str | None = None

    def previous(self) -> str | None:
        """The newest release older than current."""
        older = sorted(r for r in self.releases if self.current is None or r < self.current)
        return older[-1] if older else None


#: Seconds a deploy or rollback waits for another one holding the device directory (EDGEPACK_DEVICE_LOCK_WAIT).
LOCK_WAIT = 60.0


_HELD: set = set()       # owner strings of the device locks this process holds right now


@contextlib.contextmanager
def device_lock(transport: Transport, remote_dir: str, what: str, progress: Progress | None = None):
    """Hold the device directory's lock (``DIR/.lock``, made with ``mkdir``: atomic on any file system) for the
    ``with`` block: deploy, rollback and pruning change ``releases/`` and ``current``, and two at once would lose
    a release. Another holder is named (pid, host, since) in the progress and, after ``EDGEPACK_DEVICE_LOCK_WAIT``
    seconds (default 60), in a DeployError; the device is left as it was. A lock left by a process of this host
    that is gone (or by an earlier, cut-off call of this process) is taken over. A directory the lock had to
    create is removed again when it is still empty."""
    import socket as _socket
    wait = float(os.environ.get("EDGEPACK_DEVICE_LOCK_WAIT", LOCK_WAIT))
    host = _socket.gethostname()
    owner = f"edgepack pid {os.getpid()} on {host} since " \
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} ({what}) {secrets.token_hex(4)}"
    d = '"$d"'
    take = "\n".join([
        f"d={transport.path_expr(remote_dir)}",
        f'[ -e {d} ] || echo "NEW=1"',
        f"mkdir -p {d} || exit 93",
        f"if mkdir {d}/.lock 2>/dev/null; then printf '%s' {q(owner)} > {d}/.lock/owner; echo LOCKED; "
        f"elif [ -d {d}/.lock ]; then printf 'HELD='; cat {d}/.lock/owner 2>/dev/null; echo; "
        f"else echo \"cannot create {remote_dir}/.lock\" >&2; exit 93; fi"])

    def unlock(who: str) -> str:      # remove the lock only while ``who`` holds it
        return (f"d={transport.path_expr(remote_dir)}\n"
                f"[ \"$(cat {d}/.lock/owner 2>/dev/null)\" = {q(who)} ] && rm -rf {d}/.lock")
    deadline = time.monotonic() + wait
    said, created = False, False
    while True:
        res = _check(transport.sh(take), "taking the device directory's lock", transport)
        created = created or "NEW=1" in res.out.splitlines()
        if "LOCKED" in res.out.splitlines():
            break
        holder = next((ln[5:] for ln in res.out.splitlines() if ln.startswith("HELD=")), "") or "another edgepack"
        if _stale(holder, host):
            _cleanup(transport, unlock(holder))
            _notify(progress, "wait", f"took over the lock of {holder}, which is gone")
            continue
        if time.monotonic() >= deadline:
            raise DeployError(f"{remote_dir} on {transport.describe()} is locked by {holder}; nothing was changed",
                              hint=f"wait for it to finish, or, if that process is gone, remove {remote_dir}/.lock "
                                   "on the device")
        if not said:
            _notify(progress, "wait", f"{remote_dir} is locked by {holder}")
            said = True
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    _HELD.add(owner)
    try:
        yield
    finally:
        _HELD.discard(owner)
        _cleanup(transport, unlock(owner) + (f"\nrmdir {d} 2>/dev/null" if created else "") + "\ntrue")


def _stale(holder: str, host: str) -> bool:
    """Whether a lock's ``holder`` ("edgepack pid N on HOST since ...") is a process of this host that is gone,
    or an earlier call of this very process that no longer holds it (cut off before it could let go)."""
    m = re.match(r"edgepack pid (\d+) on (\S+) since ", holder)
    if not m or m.group(2) != host:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return holder not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _check(res: Completed, what: str, transport: Transport) -> Completed:
    if res.rc == 92:
        raise DeployError(f"{what} failed on {transport.describe()}: {res.last_error_line()} (edgepack keeps "
                          "'current' as a symbolic link to releases/ID); nothing was switched",
                          hint="move that 'current' away on the device (it is not edgepack's), then deploy again")
    if res.rc != 0:
        raise DeployError(f"{what} failed on {transport.describe()}: {res.last_error_line()}")
    return res


def _open(transport: Transport, remote_dir: str, hash_files: Sequence[str] = (), read_manifest: bool = False) -> _State:
    """Connect, resolve ``remote_dir`` on the device and read its state, all in one remote call."""
    transport.path_expr(remote_dir)  # an unusable path is refused before connecting
    transport.connect()
    return _probe(transport, remote_dir, hash_files, read_manifest)


def _probe(transport: Transport, remote_dir: str, hash_files: Sequence[str] = (), read_manifest: bool = False) -> _State:
    d = '"$d"'
    script = [
        f"d={transport.path_expr(remote_dir)}",
        'printf "DIR=%s\\n" "$d"', 'printf "HOME=%s\\n" "$HOME"',
        f'for t in {" ".join(transport.required_tools)}; do command -v "$t" >/dev/null 2>&1 || echo "MISSING=$t"; done',
        f'if [ -d {d} ]; then echo "EXISTS=1"; fi',
        f'c=$(readlink {d}/current 2>/dev/null) && echo "CURRENT=$c"',
        f'if [ -x {d}/venv/bin/python ]; then echo "VENV=1"; fi',
        f'for r in {d}/releases/*; do if [ -d "$r" ]; then echo "RELEASE=${{r##*/}}"; fi; done',
    ]
    if hash_files:
        script.append(f"if cd {d}/releases 2>/dev/null; then sha256sum "
                      + " ".join("*/" + q(rel) for rel in hash_files) + " 2>/dev/null; fi")
    if read_manifest:
        script.append(f'echo "@@MANIFEST@@"; cat {d}/current/manifest.json 2>/dev/null')
    script.append("true")
    res = _check(transport.sh("\n".join(script)), "reading the device's state", transport)
    text = res.out
    manifest_text = None
    if read_manifest and "@@MANIFEST@@\n" in text:
        text, manifest_text = text.split("@@MANIFEST@@\n", 1)
    st = _State(dir="")
    resolved, home, missing = None, "", []
    for line in text.splitlines():
        if line.startswith("DIR=") and resolved is None:
            resolved = line[4:]
        elif line.startswith("HOME=") and not home:
            home = line[5:]
        elif line.startswith("MISSING="):
            missing.append(line[8:])
        elif line == "EXISTS=1":
            st.exists = True
        elif line.startswith("CURRENT="):
            st.current_raw = line[8:]
            target = st.current_raw.rstrip("/")
            rid = target.rsplit("/", 1)[-1]
            if RELEASE_RE.match(rid) and target.endswith(f"releases/{rid}"):
                st.current = rid
        elif line == "VENV=1":
            st.venv = True
        elif line.startswith("RELEASE="):
            if RELEASE_RE.match(line[8:]):
                st.releases.append(line[8:])
        else:
            m = _SHA_LINE.match(line)
            if m and "/" in m[2]:
                rel_release, rel = m[2].split("/", 1)
                st.hashes[(rel_release, rel)] = m[1]
    if resolved is None:
        raise DeployError(f"{transport.describe()} gave no answer to the state probe: {res.last_error_line()}")
    if missing:
        raise DeployError(f"{transport.describe()} lacks {', '.join(missing)} (needed to checksum and unpack files)",
                          hint=transport.device_tools_hint or None)
    if remote_dir.startswith("~") and not home.startswith("/"):
        raise DeployError(f"{transport.describe()} has no usable $HOME for {remote_dir!r}", hint="pass an absolute --remote-dir")
    st.dir = transport.normalize_dir(resolved, home or "/", remote_dir)
    st.home = home
    st.releases.sort()
    if st.current is not None and st.current not in st.releases:
        st.current = None
    if manifest_text is not None and manifest_text.strip():
        try:
            st.manifest = json.loads(manifest_text)
            if not isinstance(st.manifest, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            st.manifest, st.manifest_error = None, f"current/manifest.json is not valid JSON ({exc})"
    return st


def _remote_hashes(transport: Transport, directory: str, rels: Sequence[str]) -> dict[str, str]:
    """sha256 of files in ``directory`` computed by the device's sha256sum (missing files are absent)."""
    if not rels:
        return {}
    res = transport.sh(f"cd {q(directory)} && sha256sum " + " ".join(q(r) for r in rels),
                       timeout=transfer_timeout(0, transport.timeout) * 2)
    got: dict[str, str] = {}
    for line in res.out.splitlines():
        m = _SHA_LINE.match(line)
        if m:
            got[m[2]] = m[1]
    return got


def _mismatches(want: dict[str, str], got: dict[str, str]) -> list[str]:
    out = []
    for rel, digest in want.items():
        have = got.get(rel)
        if have is None:
            out.append(f"{rel} is missing")
        elif have != digest:
            out.append(f"{rel} has sha256 {have[:12]}... instead of {digest[:12]}...")
    return out


def _switch_script(rdir: str, target: str | None) -> str:
    """Point DIR/current at releases/<target> atomically (or remove it when target is None).

    ``mv -T`` (GNU coreutils, busybox, toybox) renames the new link over the old one in one rename(2);
    where ``-T`` is unsupported the fallback removes the old link first (a tiny non-atomic window)."""
    d = q(rdir)
    if target is None:
        return f"rm -f {d}/current {d}/.current-tmp"
    rel = q(f"releases/{target}")
    return "\n".join([
        "set -e",
        f"cd {d}",
        f"test -d {rel}",
        'if [ -e current ] && [ ! -L current ]; then echo "current is not a link: it is a $(stat -c %F current)" >&2; '
        'exit 92; fi',
        "rm -f .current-tmp",
        f"ln -s {rel} .current-tmp",
        "mv -T .current-tmp current 2>/dev/null || { rm -f current && mv .current-tmp current; }",
        'echo "CURRENT=$(readlink current)"',
    ])


def _switch(transport: Transport, rdir: str, target: str | None) -> None:
    res = transport.sh(_switch_script(rdir, target))
    _check(res, "switching current", transport)
    if target is not None and f"CURRENT=releases/{target}" not in res.out.splitlines():
        raise DeployError(f"switching current to {target} on {transport.describe()} did not take effect "
                          f"(it reads {res.out.strip()!r})")


def _release_id(model_sha256: str, taken: Sequence[str]) -> str:
    """``<UTC yyyymmddThhmmssZ>-<12 hex of model_sha256>``, in a second no release on the device has
    (and later than every one of them), so that release ids sort by time: rollback and pruning
    order releases by id, and two deploys within one second must not be ordered by model hash."""
    fmt = "%Y%m%dT%H%M%SZ"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    horizon = (now + timedelta(days=1)).strftime(fmt)
    # a release in this second (or from a host whose clock runs a little ahead): the next second; one dated
    # beyond a day ahead (a device clock at 2100) does not drag every later id there
    latest = max((r[:16] for r in taken if RELEASE_RE.match(r) and r[:16] <= horizon), default=None)
    if latest is not None:
        now = max(now, datetime.strptime(latest, fmt).replace(tzinfo=timezone.utc) + timedelta(seconds=1))
    return now.strftime(fmt) + "-" + model_sha256[:12]


def _prune_list(releases: Sequence[str], keep: int, protect: Sequence[str | None]) -> list[str]:
    ordered = sorted(set(releases), reverse=True)
    keep_set = set(ordered[:keep]) | {p for p in protect if p}
    return [r for r in ordered if r not in keep_set]


def _prune_script(rdir: str, doomed: Sequence[str]) -> str:
    if not doomed:
        return "true"
    return f"cd {q(rdir + '/releases')} && rm -rf " + " ".join(q(r) for r in doomed)


def _verify_commit_script(rdir: str, release: str, want: dict[str, str]) -> str:
    """On the device: sha256sum every staged file, compare, and only if all match move staging to
    releases/<id>. Exit 91 (staging removed) on a mismatch; prints ``SUM=<hex> <file>`` lines."""
    staging = f"{rdir}/.staging-{release}"
    lines = [f"cd {q(staging)} || exit 90", "bad="]
    for rel, digest in want.items():
        lines.append(f"h=$(sha256sum {q(rel)} 2>/dev/null); h=${{h%% *}}; echo \"SUM=$h \"{q(rel)}; "
                     f"[ \"$h\" = {q(digest)} ] || bad=1")
    lines += [f'if [ -n "$bad" ]; then cd / && rm -rf {q(staging)}; exit 91; fi',
              "set -e", f"cd {q(rdir)}", f"test ! -e {q('releases/' + release)}",
              f"mv {q('.staging-' + release)} {q('releases/' + release)}"]
    return "\n".join(lines)


def _parse_sums(text: str) -> dict[str, str]:
    got = {}
    for line in text.splitlines():
        m = re.match(r"^SUM=([0-9a-f]{64})? (.+)$", line)
        if m and m[1]:
            got[m[2]] = m[1]
    return got


def _notify(progress: Progress | None, step: str, detail: str = "") -> None:
    if progress is not None:
        progress(step, detail)


# =========================================================================== device script
def _python_token(transport: Transport, python: str) -> str:
    if python.startswith("~/"):
        return transport.path_expr(python)
    return q(python)


def _script_failure(res: Completed, python: str, what: str) -> str:
    """Explain why ``python edgepack_run.py ...`` failed on the device, in one line."""
    if res.rc in (126, 127):
        return (f"no usable Python at {python!r} on the device ({what} could not start: "
                f"{res.last_error_line()})")
    line = next((ln for ln in reversed(res.err.splitlines() + res.out.splitlines()) if "edgepack_run: error:" in ln), None)
    detail = line.split("edgepack_run: error:", 1)[1].strip() if line else res.last_error_line()
    from device_runtime.edgepack_run import EXIT_MEANINGS
    kind = EXIT_MEANINGS.get(res.rc, "error") if res.rc else "error"
    return f"{what} failed with exit {res.rc} ({kind}): {detail}"


def script_error(res: Completed, python: str, what: str) -> DeployError:
    """The DeployError of a device script run that failed (:func:`_script_failure`, with the runtime hint where it
    applies); ``device_rc`` keeps the script's exit status (recorded in DIR/selftest.last)."""
    exc = DeployError(_script_failure(res, python, what), hint=_RUNTIME_HINT if res.rc in (4, 126, 127) else None)
    exc.device_rc = res.rc
    return exc


def fetch_outputs(transport: Transport, res: Completed, remote_out: str, local_out: Path, python: str,
                  timeout: float) -> None:
    """Bring back the outputs of one device script run: ``res`` is that run's sh result, ending with ``sha256sum`` of
    ``remote_out``'s file name; the local copy must have that digest (else it is removed). Raises
    :func:`script_error` when the run failed, DeployError when the file arrived damaged."""
    if res.rc != 0:
        raise script_error(res, python, "the run")
    name = remote_out.rsplit("/", 1)[-1]
    digest = next((m[1] for m in map(_SHA_LINE.match, res.out.splitlines()) if m and m[2] == name), None)
    transport.download(remote_out, local_out, timeout=timeout)
    if digest is None or sha256_file(local_out) != digest:
        local_out.unlink(missing_ok=True)
        raise DeployError("the outputs arrived damaged from the device (checksum mismatch)", hint="run again")


_RUNTIME_HINT = ("install the runtime on the device (ssh: deploy --install builds DIR/venv from requirements.txt) "
                 "or point --device-python at a Python that has numpy and ai-edge-litert")


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


#: How a deploy judges a release after its switch, registered by :mod:`packager.deploy.ondevice` (imported with
#: ``packager.deploy``): "samples" (bundle -> the bundled samples as material) and "judge" (run and judge material).
GATES: dict[str, Callable] = {}

SELFTEST_RECORD = "selftest.last"   # DIR/selftest.last: the last smoke run's result (read by fleet status)


def last_selftest(transport: Transport, rdir: str) -> dict | None:
    """The outcome of the last smoke run recorded in ``rdir`` (resolved, absolute), or None."""
    res = transport.sh(f"cat {q(rdir + '/' + SELFTEST_RECORD)} 2>/dev/null || true")
    fields: dict[str, str] = {}
    for line in res.out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("RELEASE", "AT", "RC", "ERROR", "REPORT") and key not in fields:
            fields[key] = value
    if "RC" not in fields:
        return None
    try:
        rc = int(fields["RC"])
    except ValueError:
        rc = -1
    try:
        report = json.loads(fields.get("REPORT") or "null")
    except ValueError:
        report = None
    report = report if isinstance(report, dict) else None
    return {"release": fields.get("RELEASE"), "at": fields.get("AT"), "rc": rc,
            "passed": rc == 0 and bool(report and report.get("passed")), "error": fields.get("ERROR") or None,
            "report": report}


# =========================================================================== deploy
def deploy(bundle_dir: str | Path, transport: Transport, remote_dir: str | None = None, keep: int = 3,
           install: bool = False, smoke: bool = False, progress: Progress | None = None, *,
           device_python: str | None = None, runtime: str | None = None, verify=None) -> DeployResult:
    """Upload a bundle as a new release, verify it on the device, switch ``current`` to it.

    ``progress(step, detail)`` is called before each step: connect, plan, upload, verify, install,
    switch, smoke, prune. Over SSH a deploy is four remote calls on one connection (check, plan,
    stage+upload, verify+commit+switch+prune) plus one for ``smoke`` and one for ``install``.
    ``runtime`` (``ai_edge_litert``/``tflite_runtime``/``tensorflow``) makes the smoke run use that
    runtime (``--runtime``). ``smoke`` runs the bundled samples on the device after the switch and judges them with
    the verdict's criteria against the outputs recorded at build; ``verify`` (a
    :class:`~packager.deploy.ondevice.Material`: held-out inputs and the reference model's outputs) judges the release
    on them the same way. A gate that fails switches ``current`` back and drops the release (DeployError); the
    last outcome is recorded in DIR/selftest.last (:func:`last_selftest`)."""
    started = time.monotonic()
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 release")
    if install and not transport.supports_install:
        raise UsageError(f"--install is not available over {transport.method}",
                         hint="on Android install Python, numpy and ai-edge-litert yourself (e.g. Termux) and pass --device-python")
    bundle = load_bundle(bundle_dir)
    if install and "requirements.txt" not in bundle.wanted:
        raise UsageError(f"--install needs requirements.txt in the bundle; {bundle.path} has none")
    gates = ([("smoke test", GATES["samples"](bundle))] if smoke else []) + \
        ([("the verdict on the device", verify)] if verify is not None else [])
    spec = remote_dir or default_remote_dir(bundle.manifest, transport)
    transport.path_expr(spec)  # an unusable --remote-dir is refused before connecting
    _notify(progress, "connect", transport.describe())
    transport.connect()
    sent_before = transport.bytes_sent
    _notify(progress, "plan", spec)
    with device_lock(transport, spec, "deploying", progress):
        return _deploy_locked(bundle, transport, spec, keep, install, gates, progress, device_python, runtime,
                              started, sent_before)


def _deploy_locked(bundle, transport: Transport, spec: str, keep: int, install: bool, gates: list, progress,
                   device_python, runtime, started: float, sent_before: int) -> DeployResult:
    """The deploy, with the device directory's lock held (:func:`device_lock`)."""
    want = bundle.wanted
    st = _probe(transport, spec, hash_files=list(want))
    rdir = st.dir
    prev = st.current
    order = ([prev] if prev else []) + [r for r in reversed(st.releases) if r != prev]
    sources: dict[str, str] = {}
    for rel, digest in want.items():
        for rel_release in order:
            if st.hashes.get((rel_release, rel)) == digest:
                sources[rel] = rel_release
                break
    unchanged = prev is not None and all(sources.get(rel) == prev for rel in want)

    uploaded: tuple[str, ...] = ()
    reused: tuple[str, ...] = tuple(sorted(sources))
    python = device_python
    installed = False
    if unchanged:
        release = prev
        if install:
            python = _install(transport, rdir, bundle, device_python or _profile_python(bundle.manifest), progress)
            installed = True
    else:
        release = _release_id(bundle.model_sha256, st.releases)
        staging = f"{rdir}/.staging-{release}"
        doomed = _prune_list(st.releases + [release], keep, (release, prev))
        dirs = sorted({staging + "/" + rel.rsplit("/", 1)[0] for rel in want if "/" in rel})
        prepare = ["set -e", f"mkdir -p {q(rdir + '/releases')}", f"rm -rf {q(rdir)}/.staging-*",
                   f"mkdir -p {q(staging)} " + " ".join(q(x) for x in dirs)]
        for rel, rel_release in sorted(sources.items()):
            src, dst = q(f"{rdir}/releases/{rel_release}/{rel}"), q(f"{staging}/{rel}")
            prepare.append(f"ln {src} {dst} 2>/dev/null || cp {src} {dst}")
        to_send = [(bundle.local(rel), rel) for rel, _ in bundle.files if rel not in sources]
        uploaded = tuple(rel for _, rel in to_send)
        _notify(progress, "upload", f"{len(to_send)} files, {sum(bundle.sizes[r] for r in uploaded)} bytes "
                                    f"({len(sources)} reused on the device)")
        try:
            transport.upload(to_send, staging, prepare="\n".join(prepare),
                             timeout=transfer_timeout(sum(bundle.sizes[r] for r in uploaded), transport.timeout))
            # One round trip: the device checksums every file with its own sha256sum and only if all
            # match renames staging to releases/<id>, switches current and prunes (unless --install
            # has to run in between).
            _notify(progress, "verify", staging)
            script = _verify_commit_script(rdir, release, want)
            if not install:
                _notify(progress, "switch", f"current -> releases/{release}")
                script += "\n" + _switch_script(rdir, release) + "\n" + _prune_script(rdir, doomed)
            res = transport.sh(script, timeout=transfer_timeout(sum(bundle.sizes.values()), transport.timeout))
            if res.rc == 91:
                problems = _mismatches(want, _parse_sums(res.out))
                raise DeployError(
                    f"checksum mismatch on the device after the transfer: {'; '.join(problems) or res.out.strip()}; "
                    f"current is unchanged ({prev or 'none'})",
                    hint="the transfer was cut off or corrupted; run the deploy again")
            _check(res, "verifying and switching to the new release", transport)
        except BaseException:
            _cleanup(transport, f"rm -rf {q(staging)}")
            raise
        try:
            if install:
                python = _install(transport, rdir, bundle, device_python or _profile_python(bundle.manifest), progress)
                installed = True
                _notify(progress, "switch", f"current -> releases/{release}")
                res = _check(transport.sh(_switch_script(rdir, release) + "\n" + _prune_script(rdir, doomed)),
                             "switching current", transport)
            if f"CURRENT=releases/{release}" not in res.out.splitlines():
                raise DeployError(f"switching current to {release} on {transport.describe()} did not take effect")
        except BaseException:
            _cleanup(transport, _switch_script(rdir, prev) + f"\nrm -rf {q(rdir + '/releases/' + release)}")
            raise
        if doomed:
            _notify(progress, "prune", ", ".join(doomed))

    if python is None:
        python = f"{rdir}/venv/bin/python" if (st.venv or installed) else _profile_python(bundle.manifest)
    selftest = verdict = None
    for what, material in gates:
        gate = GATES["judge"]
        _notify(progress, "smoke" if what == "smoke test" else "verdict",
                f"{python} {bundle.manifest.entrypoint} on {material.evidence.get('text')}")
        outcome, failure = gate(transport, rdir, bundle, release, python, runtime, material, what,
                                progress=lambda step, detail: _notify(progress, "  " + step, detail))
        if what == "smoke test":
            selftest = outcome
        else:
            verdict = outcome
        if failure is not None:
            hint = _RUNTIME_HINT if "exit 4" in failure or "no usable Python" in failure else None
            if not unchanged:
                # Put back what was there before and drop the release that failed.
                _cleanup(transport, _switch_script(rdir, prev) + f"\nrm -rf {q(rdir + '/releases/' + release)}")
                err = DeployError(f"{what} of release {release} failed, so current was switched back to "
                                  f"{prev or 'nothing (first deploy)'}: {failure}", hint=hint)
            else:
                err = DeployError(f"{what} of the current release {release} failed: {failure}", hint=hint)
            report = getattr(outcome, "report", None) or {}
            # what failed, as data (fleet reads these instead of the message's words)
            err.gate = {"gate": "smoke" if what == "smoke test" else "verdict", "switched_back": not unchanged,
                        "release": release, "verdict": report.get("verdict") if isinstance(report, dict) else None,
                        "line": report.get("line") if isinstance(report, dict) else None, "failure": failure}
            raise err

    if unchanged:
        doomed = _prune_list(st.releases, keep, (release, st.previous()))
        if doomed:
            _notify(progress, "prune", ", ".join(doomed))
            _check(transport.sh(_prune_script(rdir, doomed)), "pruning old releases", transport)
    return DeployResult(device=transport.describe(), remote_dir=rdir, release=release, previous=prev if not unchanged else st.previous(),
                        changed=not unchanged, uploaded=uploaded, reused=reused if not unchanged else tuple(sorted(want)),
                        bytes_sent=transport.bytes_sent - sent_before, pruned=tuple(doomed), installed=installed,
                        device_python=python, smoke=selftest, seconds=time.monotonic() - started, verdict=verdict)


def _cleanup(transport: Transport, script: str) -> None:
    """Best effort: the original error matters more than a failed clean-up."""
    try:
        transport.sh(script)
    except Exception:  # noqa: S110 - a dead link cannot clean up; the next deploy will
        pass


def _install(transport: Transport, rdir: str, bundle: Bundle, python: str, progress: Progress | None) -> str:
    """``DIR/venv`` on the device holding exactly the wheels the bundle locks: its requirement lines, checked by
    :func:`load_bundle` and rewritten here from their parts (``name==version --hash=sha256:...``), go to ``pip
    install --require-hashes --only-binary :all: --no-deps`` through a here-document (pip never reads a file of
    the bundle: a path there would run its setup.py even with ``--only-binary``). The device's Python and CPU are
    asked first: when the bundle locks no wheel for them, DeployError names the wheels and what they are for."""
    venv_python = f"{rdir}/venv/bin/python"
    lines = _install_lines(bundle)
    device = _device_platform(transport, python)
    _check_installable(lines, bundle.manifest, device, python)
    _notify(progress, "install", f"{python} -m venv {rdir}/venv; pip install --require-hashes --only-binary :all: "
                                 f"--no-deps " + " ".join(ln.split(" --hash")[0] for ln in lines))
    res = transport.sh(
        f"{_python_token(transport, python)} -m venv {q(rdir + '/venv')} && "
        f"{q(venv_python)} -m pip install --disable-pip-version-check --no-input -q --require-hashes "
        "--only-binary :all: --no-deps -r /dev/stdin <<'END_OF_REQUIREMENTS'\n"
        + "\n".join(lines) + "\nEND_OF_REQUIREMENTS",
        timeout=INSTALL_TIMEOUT)
    if res.rc != 0:
        if res.rc in (126, 127):
            raise DeployError(f"--install: no usable Python at {python!r} on the device: {res.last_error_line()}",
                              hint="pass --device-python PATH")
        failure = _pip_failure(res.out + "\n" + res.err, bundle.manifest, device)
        if failure:
            raise DeployError(f"--install on {transport.describe()}: {failure[0]}; current is unchanged", hint=failure[1])
        raise DeployError(f"--install failed on {transport.describe()}: {res.last_error_line()}; current is unchanged",
                          hint="on Debian/Raspberry Pi OS: sudo apt-get install python3-venv; the device also needs "
                               "network access to the package index")
    return venv_python


def _install_lines(bundle: Bundle) -> list[str]:
    """requirements.txt's lines, each rebuilt from its checked parts (requirement, sha256 hashes); UsageError when
    a line pins no wheel hash (a bundle written before the runtime lock)."""
    from ..bundle.files import split_requirement
    out = []
    for raw in bundle.local("requirements.txt").read_text().splitlines():
        if not raw.split(" #")[0].strip() or raw.strip().startswith("#"):
            continue
        req, hashes = split_requirement(raw)          # load_bundle has refused anything else already
        if not hashes or not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", req):
            raise UsageError(f"--install: {bundle.path.name}/requirements.txt line {raw.strip()[:60]!r} pins no wheel "
                             "hash, so the device would install whatever the index offers that day",
                             hint="rebuild the bundle with this edgepack: its requirements name the exact wheels "
                                  "(packager/runtimes.lock.json) the verdict rests on")
        out.append(req + " " + " ".join(f"--hash=sha256:{h}" for h in hashes))
    return out


_ARCH = {"aarch64": "arm64", "arm64": "arm64", "armv8l": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


def _device_platform(transport: Transport, python: str) -> tuple[str, str]:
    """(``3.11``, ``arm64``): the device Python's version and CPU, as the runtime lock names them."""
    res = transport.sh(f"{_python_token(transport, python)} -c "
                       + q("import sys, platform; print('DEVICE_PLATFORM %d.%d %s' % (sys.version_info[0], "
                           "sys.version_info[1], platform.machine()))"))
    line = next((ln for ln in res.out.splitlines() if ln.startswith("DEVICE_PLATFORM ")), None)
    if res.rc != 0 or line is None:
        raise DeployError(f"--install: no usable Python at {python!r} on the device: {res.last_error_line()}",
                          hint="pass --device-python PATH")
    _, version, machine = line.split(" ", 2)
    return version, _ARCH.get(machine.strip().lower(), machine.strip())


def _manifest_wheels(manifest) -> list[dict]:
    runtimes = manifest.get("runtimes") if hasattr(manifest, "get") else None
    return [w for rt in (runtimes or []) if isinstance(rt, dict) for w in (rt.get("wheels") or [])
            if isinstance(w, dict) and isinstance(w.get("sha256"), str)]


def _check_installable(lines: list[str], manifest, device: tuple[str, str], python: str) -> None:
    """DeployError when a line has no locked wheel for the device's Python and CPU (pip would otherwise fetch
    another wheel only to refuse its hash): which wheel, what the bundle has it for, what to do."""
    wheels = _manifest_wheels(manifest)
    py, arch = device
    for line in lines:
        hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        fits = [w for w in wheels if w["sha256"] in hashes]
        if not fits or any(w.get("python") == py and w.get("arch") == arch for w in fits) \
                or all(w.get("platform") == "any" for w in fits):     # a pure-Python wheel fits every device
            continue
        has = sorted({f"Python {w.get('python')} on {w.get('arch')}" for w in fits})
        pythons = sorted({str(w.get("python")) for w in fits})
        raise DeployError(
            f"--install: the device (Python {py}, {arch}) cannot install {line.split(' --hash')[0]}: the bundle "
            f"locks only {', '.join(w['filename'] for w in fits)} ({'; '.join(has)}); current is unchanged",
            hint=(f"point --device-python (now {python!r}) at a Python {' or '.join(pythons)} on the device, or build "
                  f"the bundle for a target whose python is {py} (targets/*.toml: python = \"{py}\")"))


def _pip_failure(text: str, manifest, device: tuple[str, str]) -> tuple[str, str] | None:
    """pip's refusal in one line and a hint: a wheel whose sha256 differs from the locked one, or none found."""
    m = re.search(r"^\s*(\S+==\S+) from (\S+)[^\n]*\n\s*Expected sha256 ([0-9a-f]+)[^\n]*\n\s*Got\s+([0-9a-f]+)",
                  text, re.M)
    if m:
        which, url, want, got = m.groups()
        return (f"pip refused {which} ({url.split('#')[0].rstrip(':').rsplit('/', 1)[-1]}): its sha256 {got[:16]}... is not the "
                f"locked {want[:16]}...",
                "the package index served a different file than the one the verdict rests on: check the device's "
                "index (pip config, PIP_INDEX_URL, a proxy), or rebuild the bundle if its lock was edited")
    m = re.search(r"No matching distribution found for (\S+)", text)
    if m:
        which = m.group(1)
        name = re.split(r"[=<>!~ ]", which)[0].lower().replace("_", "-")
        fits = [w for w in _manifest_wheels(manifest) if w.get("name", "").lower().replace("_", "-") == name]
        files = ", ".join(sorted({w["filename"] for w in fits})) or "none"
        return (f"the device (Python {device[0]}, {device[1]}) cannot get {which} (locked wheels: {files})",
                "the device needs access to the package index (pip config, PIP_INDEX_URL), and a Python and glibc "
                "those wheels fit (manylinux tag in the file name)")
    return None


def _profile_python(manifest: dict) -> str:
    target = manifest.get("target") or {}
    if isinstance(target, dict) and isinstance(target.get("device_python"), str):
        return target["device_python"]
    profile = _profile(manifest)
    return profile.device_python if profile else "python3"


def _profile(manifest: dict):
    target = manifest.get("target") or {}
    name = target.get("name") if isinstance(target, dict) else target
    if not isinstance(name, str):
        return None
    try:
        from ..targets import get_target
        return get_target(name)
    except Exception:  # noqa: BLE001 - an unknown target only loses defaults
        return None


def deploy_method(manifest: dict) -> str | None:
    """The bundle's target deploy method (a key of ``TRANSPORTS``), from the manifest or its target profile."""
    from .transports import TRANSPORTS
    target = manifest.get("target") or {}
    if isinstance(target, dict) and target.get("deploy") in TRANSPORTS:
        return target["deploy"]
    profile = _profile(manifest)
    return profile.deploy if profile else None


def default_remote_dir(manifest: dict, transport: Transport) -> str:
    """The bundle's directory on the device: the transport's own ``directory`` (``--local DIR``), else the manifest's
    ``target.remote_dir``, else its target profile's (same deploy method), else the transport's default; ``{name}``
    becomes the bundle name. UsageError for an invalid bundle name."""
    name = check_name(manifest.get("name"))
    if transport.directory:            # the address names the directory itself (``--local DIR``)
        return transport.directory
    target = manifest.get("target") or {}
    template = target.get("remote_dir") if isinstance(target, dict) else None
    if not isinstance(template, str):
        profile = _profile(manifest)
        if profile is not None and profile.deploy == transport.method:
            template = profile.remote_dir
    if not isinstance(template, str):
        template = transport.remote_dir or "~/edgepack/{name}"
    return template.replace("{name}", name)


# =========================================================================== rollback / status
def rollback(transport: Transport, remote_dir: str, to: str | None = None,
             progress: Progress | None = None) -> RollbackResult:
    """Switch ``current`` to the release before it (or to ``to``), after checksumming that release."""
    if to is not None and not RELEASE_RE.match(to):
        raise UsageError(f"release {to!r} is not a release id (yyyymmddThhmmssZ-<12 hex>)")
    _notify(progress, "connect", transport.describe())
    transport.path_expr(remote_dir)
    transport.connect()
    with device_lock(transport, remote_dir, "rolling back", progress):
        return _rollback_locked(transport, remote_dir, to, progress)


def _rollback_locked(transport: Transport, remote_dir: str, to: str | None, progress) -> RollbackResult:
    st = _probe(transport, remote_dir)
    rdir = st.dir
    if not st.releases:
        raise DeployError(f"{rdir} on {transport.describe()} holds no releases")
    target = to or st.previous()
    if target is None:
        raise DeployError(f"there is no release older than {st.current} in {rdir} to roll back to",
                          hint="releases: " + ", ".join(st.releases))
    if target not in st.releases:
        raise DeployError(f"release {target} is not on the device", hint="releases: " + ", ".join(st.releases))
    if target == st.current:
        raise DeployError(f"{target} is already current")
    _notify(progress, "verify", target)
    problems = _verify_release(transport, f"{rdir}/releases/{target}")
    if problems:
        raise DeployError(f"release {target} is damaged on the device ({'; '.join(problems)}); current is unchanged",
                          hint="deploy the bundle again instead")
    _notify(progress, "switch", f"current -> releases/{target}")
    _switch(transport, rdir, target)
    return RollbackResult(device=transport.describe(), remote_dir=rdir, from_release=st.current, to_release=target)


def _verify_release(transport: Transport, release_dir: str) -> list[str]:
    res = transport.sh(f"cat {q(release_dir + '/manifest.json')}")
    if res.rc != 0:
        return ["manifest.json is missing"]
    try:
        files = json.loads(res.stdout.decode("utf-8")).get("files") or {}
        want = {check_relpath(rel): str(v).removeprefix("sha256:") for rel, v in files.items()}
    except (ValueError, AttributeError, UsageError) as exc:
        return [f"manifest.json is not valid ({exc})"]
    return _mismatches(want, _remote_hashes(transport, release_dir, list(want)))


def _release_info(rid: str, current: str | None) -> ReleaseInfo:
    stamp, sha = rid.split("-", 1)
    created = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).isoformat()
    return ReleaseInfo(id=rid, created=created, model_sha256_prefix=sha, current=rid == current)


def status(transport: Transport, remote_dir: str, verify: bool = True) -> StatusResult:
    """What is deployed in ``remote_dir``: releases, current, and whether current is intact."""
    st = _open(transport, remote_dir, read_manifest=True)
    rdir = st.dir
    problems: list[str] = []
    if st.current_raw is not None and st.current is None:
        problems.append(f"current points at {st.current_raw!r}, which is not a release here")
    if st.manifest_error:
        problems.append(st.manifest_error)
    verified = None
    if verify and st.current is not None:
        found = _verify_release(transport, f"{rdir}/releases/{st.current}")
        problems += found
        verified = not found
    manifest = st.manifest or {}
    return StatusResult(device=transport.describe(), remote_dir=rdir, exists=st.exists, current=st.current,
                        previous=st.previous() if st.current else None,
                        releases=tuple(_release_info(r, st.current) for r in st.releases),
                        name=manifest.get("name"), model_sha256=manifest.get("model_sha256"),
                        verified=verified, problems=tuple(problems), venv=st.venv)


# =========================================================================== run
_BENCH_LINE = re.compile(r"Inference timings in us: (.*)")
_PEAK_MEM = re.compile(r"Peak memory footprint \(MB\): init=([0-9.eE+-]+) overall=([0-9.eE+-]+)")


def _parse_benchmark_model(text: str, runs: int) -> dict:
    """Read LiteRT ``benchmark_model``'s summary: 'Inference timings in us: Init: .., First inference: ..,
    Warmup (avg): .., Inference (avg): ..'."""
    out: dict = {"tool": "benchmark_model", "runs": runs}
    matches = list(_BENCH_LINE.finditer(text))
    m = matches[-1] if matches else None
    if m is None:
        raise DeployError("benchmark_model printed no 'Inference timings' line",
                          hint="last output: " + " | ".join(text.strip().splitlines()[-3:]))
    keys = {"init": "init_ms", "first inference": "first_ms", "warmup (avg)": "warmup_mean_ms",
            "inference (avg)": "mean_ms"}
    for part in m[1].split(","):
        key, _, value = part.partition(":")
        name = keys.get(key.strip().lower())
        if name:
            try:
                out[name] = float(value.strip()) / 1000.0
            except ValueError:
                pass
    mem = _PEAK_MEM.search(text)
    if mem:
        out["peak_mem_init_mb"], out["peak_mem_mb"] = float(mem[1]), float(mem[2])
    return out


def run(transport: Transport, remote_dir: str, *, input: str | Path | None = None, output: str | Path | None = None,
        benchmark: int | None = None, benchmark_binary: str | Path | None = None, device_python: str | None = None,
        threads: int | None = None, warmup: int = 5, timeout: float | None = None) -> RunResult:
    """Run the current release's device script on the device.

    With ``input``: push the file, run ``--input/--output``, checksum and pull the outputs back.
    With ``benchmark=N``: ``--benchmark N`` JSON, or LiteRT's ``benchmark_model --graph=...`` when
    ``benchmark_binary`` names that program (pushed to DIR/bin/ next to the releases)."""
    started = time.monotonic()
    if (input is None) == (benchmark is None):
        raise UsageError("say what to run: --input FILE or --benchmark N (one of them)")
    if benchmark is not None and benchmark < 1:
        raise UsageError("--benchmark needs N >= 1")
    if benchmark_binary is not None and benchmark is None:
        raise UsageError("--benchmark-binary needs --benchmark N")
    in_path = Path(input) if input is not None else None
    if in_path is not None:
        if not in_path.is_file():
            raise UsageError(f"input file {in_path} does not exist or is not a regular file")
        if in_path.suffix.lower() not in (".npz", ".npy", ".json"):
            raise UsageError(f"input file {in_path}: use .npz (keyed by input name), .npy or .json")
    bin_path = Path(benchmark_binary) if benchmark_binary is not None else None
    if bin_path is not None and not bin_path.is_file():
        raise UsageError(f"--benchmark-binary {bin_path}: no such file")
    limit = max(timeout or 0, SMOKE_TIMEOUT, transport.timeout)

    st = _open(transport, remote_dir, read_manifest=True)
    rdir = st.dir
    if st.current is None or st.manifest is None:
        raise DeployError(f"nothing is deployed in {rdir} on {transport.describe()}",
                          hint="deploy a bundle first: edgepack deploy BUNDLE")
    manifest = st.manifest
    entry = check_relpath(manifest.get("entrypoint", "edgepack_run.py"))
    model = check_relpath(manifest.get("model", "model.tflite"))
    cur = f"{rdir}/current"
    python = device_python or (f"{rdir}/venv/bin/python" if st.venv else _profile_python(manifest))
    threads_args = f" --threads {int(threads)}" if threads else ""

    if bin_path is not None:
        remote_bin = f"{rdir}/bin/benchmark_model"
        want = sha256_file(bin_path)
        if _remote_hashes(transport, f"{rdir}/bin", ["benchmark_model"]).get("benchmark_model") != want:
            transport.upload([(bin_path, "benchmark_model")], f"{rdir}/bin",
                             timeout=transfer_timeout(bin_path.stat().st_size, transport.timeout))
            got = _remote_hashes(transport, f"{rdir}/bin", ["benchmark_model"]).get("benchmark_model")
            if got != want:
                raise DeployError("benchmark_model arrived damaged on the device (checksum mismatch)",
                                  hint="run again")
        args = f" --num_threads={int(threads)}" if threads else ""
        res = transport.sh(f"chmod 755 {q(remote_bin)} && {q(remote_bin)} --graph={q(cur + '/' + model)} "
                           f"--num_runs={int(benchmark)} --warmup_runs={int(warmup)}{args}", timeout=limit)
        if res.rc != 0:
            raise DeployError(f"benchmark_model failed on {transport.describe()} with exit {res.rc}: {res.last_error_line()}",
                              hint="is it built for this device's CPU (e.g. android_aarch64)?")
        return RunResult(device=transport.describe(), remote_dir=rdir, release=st.current, device_python=None,
                         output=None, benchmark=_parse_benchmark_model(res.out + "\n" + res.err, benchmark),
                         seconds=time.monotonic() - started)

    py = _python_token(transport, python)
    if benchmark is not None:
        res = transport.sh(f"{py} {q(cur + '/' + entry)} --benchmark {int(benchmark)} --warmup {int(warmup)}{threads_args}",
                           timeout=limit)
        report = _last_json(res.out)
        if res.rc != 0 or report is None:
            raise DeployError(_script_failure(res, python, "the benchmark"),
                              hint=_RUNTIME_HINT if res.rc in (4, 126, 127) else None)
        return RunResult(device=transport.describe(), remote_dir=rdir, release=st.current, device_python=python,
                         output=None, benchmark=report, seconds=time.monotonic() - started)

    out_path = Path(output) if output is not None else in_path.with_name(in_path.stem + "-out.npz")
    work = f"{rdir}/.run-{secrets.token_hex(6)}"
    remote_in = f"{work}/input{in_path.suffix.lower()}"
    remote_out = f"{work}/output.npz"
    try:
        _check(transport.sh(f"mkdir -p {q(work)}"), "creating a work directory", transport)
        transport.upload([(in_path, remote_in.rsplit("/", 1)[1])], work,
                         timeout=transfer_timeout(in_path.stat().st_size, transport.timeout))
        if _remote_hashes(transport, work, [remote_in.rsplit("/", 1)[1]]).get(remote_in.rsplit("/", 1)[1]) != sha256_file(in_path):
            raise DeployError("the input file arrived damaged on the device (checksum mismatch)", hint="run again")
        res = transport.sh(f"{py} {q(cur + '/' + entry)} --input {q(remote_in)} --output {q(remote_out)}{threads_args}"
                           f" && cd {q(work)} && sha256sum output.npz", timeout=limit)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fetch_outputs(transport, res, remote_out, out_path, python, limit)
    finally:
        _cleanup(transport, f"rm -rf {q(work)}")
    return RunResult(device=transport.describe(), remote_dir=rdir, release=st.current, device_python=python,
                     output=out_path, benchmark=None, seconds=time.monotonic() - started)
