"""Fleet operations on Ansible: edgepack writes a playbook, runs ``ansible-playbook`` and reads the
results as data (JSON lines from its ``edgepack_events`` callback), never by parsing Ansible's screen.

Each host runs the ``edgepack_release`` action, which runs ``packager.deploy.releases`` over Ansible's
connection (``transport.py``): the same release protocol as ``edgepack deploy``. Ansible brings what
fleets need: inventories and ``--limit``, ``serial`` batches (``--batch``), ``max_fail_percentage``
(``--max-fail``), forks, unreachable-host handling.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..deploy.releases import check_name, default_remote_dir, deploy_method, load_bundle
from ..errors import DeployError, EnvironmentProblem, UsageError

PLUGINS = Path(__file__).resolve().parent / "plugins"
INSTALL_HINT = "pip install 'edgepack[fleet]'   (or: pip install ansible-core)"
_PCT = re.compile(r"^(100|[1-9]?[0-9])%$")
_HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "has changed and you have requested strict checking")
_HOST_KEY_UNKNOWN = ("Host key verification failed", "No ED25519 host key is known", "host key is known for")

Progress = Callable[[dict], None]


# =========================================================================== results
@dataclass
class HostResult:
    """One host's row of a fleet operation: ``outcome``, the ``release`` current afterwards and ``previous``, whether
    that release holds this bundle's model (``on_bundle``), ``bytes_sent``, numbers of files ``uploaded`` and
    ``reused``, the smoke result, wall time in ``seconds``, ``reason`` and ``hint`` of a failure, the resolved
    ``remote_dir``, for status the whole per-host report (``details``), and for verify (and a gated deploy) the
    ``verdict`` on the device, its ``line`` and, when its outputs differ from the other devices', ``odd``."""
    host: str
    outcome: str                 # deployed | current | rolled back | failed | unreachable | not reached | ok | damaged (status)
    release: str | None = None   # the release current on the host afterwards (None: nothing / unknown)
    previous: str | None = None
    on_bundle: bool = False      # the current release holds this bundle's model
    bytes_sent: int = 0
    uploaded: int = 0
    reused: int = 0
    smoke: bool | None = None    # smoke run passed / failed / not run
    seconds: float | None = None
    reason: str | None = None
    hint: str | None = None
    remote_dir: str | None = None
    details: dict | None = None  # status: the full per-host report; verify: the device's facts and result
    verdict: str | None = None   # verify / gated deploy: MATCH | MISMATCH | UNVERIFIED (the verdict on the device)
    line: str | None = None      # the verdict in one line
    odd: dict | None = None      # verify: how its outputs differ from the other devices' (ondevice.odd_ones_out)


@dataclass
class FleetResult:
    """A fleet operation (``op``: deploy, status, rollback or verify) over ``inventory``: ``ok`` when every host has a good
    outcome, the bundle path and model sha256, the ``batches`` and ``max_fail`` ("N%") used, whether the rollout
    ``stopped`` early, one HostResult per host, ``counts`` per outcome, wall time in ``seconds`` and
    ansible-playbook's exit code."""
    op: str
    ok: bool
    inventory: str
    bundle: str | None
    model_sha256: str | None
    batches: list
    max_fail: str | None
    stopped: bool                # the rollout stopped early (a batch over --max-fail, or every host of a batch failed)
    hosts: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    ansible_rc: int = 0

    def to_json(self) -> dict:
        """Every field as JSON, host rows included (``dataclasses.asdict``)."""
        import dataclasses
        return dataclasses.asdict(self)


# =========================================================================== ansible
def require_ansible() -> str:
    """The ansible-core version, or EnvironmentProblem (exit 5) with the install hint."""
    try:
        from ansible.release import __version__
    except ImportError:
        raise EnvironmentProblem("ansible-core is not installed (edgepack fleet drives ansible-playbook)",
                                 hint=INSTALL_HINT) from None
    return __version__


def parse_batches(spec: str | None) -> list:
    """``1,10%,100%`` -> [1, "10%", "100%"] (Ansible ``serial``)."""
    if spec is None or not spec.strip():
        return []
    out: list = []
    for part in spec.split(","):
        part = part.strip()
        if part.isdigit() and int(part) > 0:
            out.append(int(part))
        elif _PCT.match(part) and part != "0%":
            out.append(part)
        else:
            raise UsageError(f"--batch {spec!r}: {part!r} is not a host count or a percentage",
                             hint="e.g. --batch 1,10%,100% (first one host, then 10% of the hosts at a time, then the rest)")
    return out


def parse_max_fail(spec: str | None) -> int | None:
    """``10%`` or ``10`` -> 10 (Ansible ``max_fail_percentage``, 0 to 100); None when not given. UsageError for
    anything else."""
    if spec is None or spec == "":
        return None
    m = re.fullmatch(r"(100|[1-9]?[0-9])%?", spec.strip())
    if not m:
        raise UsageError(f"--max-fail {spec!r} is not a percentage", hint="e.g. --max-fail 10% (0% stops at the first failure)")
    return int(m[1])


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def playbook_text(op: str, *, name: str | None, bundle_expr: str | None, default_dir: str | None,
                  default_python: str = "python3", batches: Sequence = (), max_fail: int | None = None,
                  keep: int = 3, smoke: bool = False, install: bool = False, to: str | None = None,
                  timeout: int = 600, hosts: str = "all", header: str = "", material: str | None = None,
                  release: str | None = None) -> str:
    """The playbook for one fleet operation. Per-host inventory variables override the target
    profile: edgepack_remote_dir, edgepack_python, edgepack_runtime."""
    dir_expr = ("{{ edgepack_remote_dir | default(%s) }}" % _jinja_str(default_dir)) if default_dir \
        else "{{ edgepack_remote_dir | default('') }}"
    lines = [f"# {line}" for line in header.splitlines()] + [
        f"- name: {_yaml_str(f'edgepack fleet {op}' + (f' {name}' if name else ''))}",
        f"  hosts: {_yaml_str(hosts)}",
        "  gather_facts: false",
    ]
    if batches:
        lines.append("  serial: [" + ", ".join(str(b) if isinstance(b, int) else _yaml_str(b) for b in batches) + "]")
    if max_fail is not None:
        lines.append(f"  max_fail_percentage: {int(max_fail)}")
    lines += [
        "  tasks:",
        f"    - name: {_yaml_str(f'edgepack {op}')}",
        f"      timeout: {int(timeout)}",
        "      edgepack_release:",
        f"        op: {op}",
    ]
    if bundle_expr:
        lines.append(f"        bundle: {_yaml_str(bundle_expr)}")
    lines += [
        f"        remote_dir: {_yaml_str(dir_expr)}",
        '        device_python: "{{ edgepack_python | default(omit) }}"',
        '        runtime: "{{ edgepack_runtime | default(omit) }}"',
    ]
    if op == "deploy":
        lines += [f"        keep: {int(keep)}", f"        smoke: {str(bool(smoke)).lower()}",
                  f"        install: {str(bool(install)).lower()}"]
        if material:
            lines.append(f"        verify_material: {_yaml_str(material)}")
    if op == "verify":
        lines.append(f"        material: {_yaml_str(material or '')}")
        if release:
            lines.append(f"        release: {_yaml_str(release)}")
    if op == "status":
        lines.append(f"        default_python: {_yaml_str(default_python)}")
    if op == "rollback" and to:
        lines.append(f"        to: {_yaml_str(to)}")
    return "\n".join(lines) + "\n"


def _jinja_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_inventory(inventory: str | Path) -> str:
    inv = str(inventory)
    if "," not in inv and not Path(inv).exists():
        raise UsageError(f"inventory {inv} does not exist", hint="pass -i inventory.ini (any Ansible inventory)")
    return inv


def _packager_root() -> str:
    return str(Path(__file__).resolve().parent.parent.parent)


def run_playbook(playbook: str, inventory: str, *, limit: str | None, forks: int, timeout: float,
                 progress: Progress | None = None) -> tuple[int, list[dict], str]:
    """Run ansible-playbook on ``playbook`` (text); returns (rc, events, ansible's output).

    The user's Ansible configuration stays in effect (ansible.cfg in the current directory,
    ~/.ansible.cfg, ANSIBLE_* variables: remote_user, private keys, ssh_args, become...). edgepack
    adds only: its action plugin next to the generated playbook, its event callback, forks, a private
    ControlPath directory (the ssh masters are stopped at the end) and host_key_checking=True."""
    require_ansible()
    work = Path(tempfile.mkdtemp(prefix="edgepack-fleet-", dir="/tmp" if os.path.isdir("/tmp") else None))  # noqa: S108
    proc = None
    try:
        (work / "local").mkdir()
        (work / "cp").mkdir()
        (work / "playbook.yml").write_text(playbook)
        (work / "action_plugins").symlink_to(PLUGINS / "action", target_is_directory=True)
        events_path = work / "events.jsonl"
        env = dict(os.environ)

        def prepend(var: str, value: str, sep: str = os.pathsep) -> str:
            return sep.join([value] + [p for p in env.get(var, "").split(sep) if p and p != value])

        env.update(EDGEPACK_FLEET_EVENTS=str(events_path),
                   ANSIBLE_CALLBACK_PLUGINS=prepend("ANSIBLE_CALLBACK_PLUGINS", str(PLUGINS / "callback")),
                   ANSIBLE_CALLBACKS_ENABLED=prepend("ANSIBLE_CALLBACKS_ENABLED", "edgepack_events", ","),
                   ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_FORKS=str(int(forks)),
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / "cp"), ANSIBLE_LOCAL_TEMP=str(work / "local"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="False",
                   ANSIBLE_DEPRECATION_WARNINGS="False",
                   PYTHONPATH=prepend("PYTHONPATH", _packager_root()))
        argv = [sys.executable, "-m", "ansible", "playbook", "-i", inventory, str(work / "playbook.yml")]
        if limit:
            argv += ["--limit", limit]
        log = work / "ansible.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            seen = 0
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    _stop(proc)
                    raise DeployError(f"ansible-playbook did not finish within {timeout:.0f} s; it was stopped",
                                      hint="raise --timeout, or use smaller --batch steps")
                time.sleep(0.1)
                if progress is not None:
                    seen = _tail_events(events_path, seen, progress)
            if progress is not None:
                _tail_events(events_path, seen, progress)
        events = _read_events(events_path)
        return proc.returncode, events, log.read_text(errors="replace")
    except BaseException:
        if proc is not None and proc.poll() is None:   # Ctrl-C, or a bug above: never leave Ansible running
            _stop(proc)
        raise
    finally:
        _stop_masters(work / "cp")
        shutil.rmtree(work, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to ansible-playbook's process group (its workers stop between steps; a host cut off
    mid-step keeps its old ``current``, and the next deploy clears its staging), SIGKILL after 10 s."""
    import signal
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail_events(path: Path, seen: int, progress: Progress) -> int:
    events = _read_events(path)
    for ev in events[seen:]:
        progress(ev)
    return len(events)


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def _stop_masters(cp: Path) -> None:
    """Stop the ssh ControlMasters Ansible left running (ControlPersist) for this run."""
    if not cp.is_dir():
        return
    for sock in cp.iterdir():
        try:
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "edgepack-fleet"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _ansible_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("ERROR!", "[ERROR]")):
            return ln
    return lines[-1] if lines else "no output"


# =========================================================================== reading results
def _classify_unreachable(msg: str) -> tuple[str, str | None]:
    if any(s in msg for s in _HOST_KEY_CHANGED):
        return ("the host key has CHANGED since it was enrolled; nothing was run on this host",
                "if the device was reinstalled, check its fingerprint, remove the old key (ssh-keygen -R) and enrol "
                "the new one (ssh-keyscan); otherwise someone may be intercepting the connection")
    if any(s in msg for s in _HOST_KEY_UNKNOWN):
        return ("the host key is unknown (not in known_hosts); nothing was run on this host",
                "check the fingerprint, then enrol the host: ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts")
    if "Permission denied" in msg:
        return ("the host refused the login: " + _last_line(msg), "install your key on the device (ssh-copy-id)")
    line = _last_line(msg)
    for prefix in ("Task failed: ", "Failed to connect to the host via ssh: "):
        line = line.split(prefix, 1)[-1]
    return (line, "check the address, that the device is on and sshd runs")


def _last_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    return lines[-1] if lines else str(msg)


def _collect(events: list[dict], ansible_rc: int, output: str) -> tuple[list[str], dict[str, dict], bool]:
    """(hosts of the play, last result event per host, stopped early)."""
    play_hosts: list[str] | None = None
    results: dict[str, dict] = {}
    for ev in events:
        if ev.get("event") == "play_start" and ev.get("hosts") is not None:   # once per serial batch
            play_hosts = (play_hosts or []) + [h for h in ev["hosts"] if h not in (play_hosts or [])]
        elif ev.get("event") == "host" and ev.get("task") in ("edgepack_release", None) or \
                ev.get("event") == "host" and ev.get("status") == "unreachable":
            results[ev["host"]] = ev
    if play_hosts is None and not any(ev.get("event") == "play_start" for ev in events):
        raise UsageError(f"ansible-playbook could not run the play (exit {ansible_rc}): {_ansible_error(output)}",
                         hint="check the inventory (ansible-inventory -i FILE --list) and --limit")
    hosts = list(play_hosts) if play_hosts is not None else sorted(results)
    if not hosts:
        raise UsageError("no host of the inventory matches", hint="check -i and --limit (ansible-inventory -i FILE --graph)")
    stopped = any(h not in results for h in hosts)
    return hosts, results, stopped


def _host_result(host: str, ev: dict | None, model_sha: str | None) -> HostResult:
    if ev is None:
        return HostResult(host, "not reached", reason="the rollout stopped before this host's batch (max-fail)")
    res = ev.get("result") or {}
    if ev.get("status") == "unreachable":
        reason, hint = _classify_unreachable(str(res.get("msg", "")))
        return HostResult(host, "unreachable", reason=reason, hint=hint)
    data = res.get("edgepack") or {}
    err = res.get("edgepack_error") or {}
    state = res.get("edgepack_state") or {}
    op = res.get("edgepack_op")
    if ev.get("status") == "failed" or err:
        release = state.get("current")
        gate = err.get("gate") or {}          # which gate of a deploy failed, as data (releases' DeployError.gate)
        switched_back = bool(gate.get("switched_back"))
        smoke_failed = gate.get("gate") == "smoke"
        gate_failed = gate.get("gate") == "verdict"
        verdict = "UNVERIFIED" if op == "verify" else None
        if gate_failed:
            verdict = gate.get("verdict") or "UNVERIFIED"
        return HostResult(host, "rolled back" if switched_back else "failed", release=release,
                          previous=state.get("previous"), on_bundle=_on(release, model_sha),
                          smoke=False if smoke_failed else None,
                          reason=err.get("message") or str(res.get("msg", "failed")), hint=err.get("hint"),
                          remote_dir=state.get("remote_dir"), verdict=verdict,
                          line=(gate.get("line") or gate.get("failure")) if gate_failed else None)
    if op == "deploy":
        smoke = data.get("smoke")
        gate = (data.get("verdict") or {}).get("report") or {}
        return HostResult(host, "deployed" if data.get("changed") else "current", release=data.get("release"),
                          previous=data.get("previous"), on_bundle=_on(data.get("release"), model_sha),
                          bytes_sent=int(data.get("bytes_sent") or 0), uploaded=len(data.get("uploaded") or ()),
                          reused=len(data.get("reused") or ()), smoke=None if smoke is None else bool(smoke.get("passed")),
                          seconds=data.get("seconds"), remote_dir=data.get("remote_dir"),
                          verdict=gate.get("verdict"), line=gate.get("line"))
    if op == "verify":
        return HostResult(host, "verified" if data.get("passed") else "mismatch", release=data.get("release"),
                          on_bundle=_on(data.get("release"), model_sha), bytes_sent=int(data.get("bytes_sent") or 0),
                          seconds=data.get("seconds"), remote_dir=data.get("remote_dir"),
                          details={"info": data.get("info"), "result": data.get("result")},
                          verdict=(data.get("line") or "UNVERIFIED").split(":", 1)[0], line=data.get("line"),
                          reason=None if data.get("passed") else data.get("line"))
    if op == "rollback":
        return HostResult(host, "rolled back", release=data.get("to_release"), previous=data.get("from_release"),
                          remote_dir=data.get("remote_dir"))
    damaged = data.get("verified") is False        # current's files no longer match its manifest
    return HostResult(host, "damaged" if damaged else "ok", release=data.get("current"), previous=data.get("previous"),
                      remote_dir=data.get("remote_dir"), details=data,
                      reason="; ".join(data.get("problems") or ()) or None if damaged else None,
                      hint="redeploy the bundle to this host (intact files are not sent again) or roll back"
                      if damaged else None)


def _on(release: str | None, model_sha: str | None) -> bool:
    return bool(release and model_sha and release.endswith("-" + model_sha[:12]))


def _finish(op: str, inventory: str, bundle: str | None, model_sha: str | None, batches, max_fail,
            events, rc, output, started) -> FleetResult:
    hosts, results, stopped = _collect(events, rc, output)
    rows = [_host_result(h, results.get(h), model_sha) for h in hosts]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    good = GOOD[op]
    ok = all(r.outcome in good for r in rows)
    return FleetResult(op=op, ok=ok, inventory=inventory, bundle=bundle, model_sha256=model_sha,
                       batches=list(batches), max_fail=None if max_fail is None else f"{max_fail}%",
                       stopped=stopped and op == "deploy", hosts=rows, counts=counts,
                       seconds=round(time.monotonic() - started, 3), ansible_rc=rc)


#: the outcomes of a host that did what the operation asked
GOOD = {"deploy": ("deployed", "current"), "rollback": ("rolled back",), "status": ("ok",), "verify": ("verified",)}


# =========================================================================== operations
def _bundle_defaults(bundle) -> tuple[str, str]:
    """(default remote dir, default device python) from the bundle's target profile."""
    from ..deploy.releases import _profile_python
    from ..deploy.ssh import SshTransport
    return default_remote_dir(bundle.manifest, SshTransport), _profile_python(bundle.manifest)


def deploy(bundle_dir: str | Path, inventory: str | Path, *, limit: str | None = None, batch: str | None = None,
           max_fail: str | None = None, smoke: bool = False, install: bool = False, keep: int = 3, forks: int = 10,
           timeout: float = 3600.0, progress: Progress | None = None, verify_data: str | Path | None = None,
           reference: str | Path | None = None, trust_model: bool = False,
           step: Callable[[str], None] | None = None) -> FleetResult:
    """Roll ``bundle_dir`` out to the inventory's hosts in batches; per host the release protocol of
    ``edgepack deploy``. With ``verify_data`` and ``reference`` the rollout is gated on the verdict: after its switch
    each host runs the held-out inputs with the new release and is judged by the verdict's criteria against the
    reference model's outputs (computed once, here); a host that does not MATCH is switched back and counts against
    ``max_fail``. Never raises for host failures: they are in the result (``ok`` False)."""
    started = time.monotonic()
    require_ansible()
    inv = _check_inventory(inventory)
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 release")
    if (verify_data is None) != (reference is None):
        raise UsageError("a rollout gated on the verdict needs both --verify-data FILE and --reference MODEL")
    batches = parse_batches(batch)
    mf = parse_max_fail(max_fail)
    bundle = _ssh_bundle(bundle_dir)        # checked once here; each host checks it again before sending
    remote_dir, _python = _bundle_defaults(bundle)
    with _material(bundle, reference, verify_data, trust_model, step) as material:
        text = playbook_text("deploy", name=bundle.name, bundle_expr=str(Path(bundle.path).resolve()),
                             default_dir=remote_dir, batches=batches, max_fail=mf, keep=keep, smoke=smoke,
                             install=install, timeout=int(min(timeout, 1800 + 600)), material=material)
        rc, events, output = run_playbook(text, inv, limit=limit, forks=forks, timeout=timeout, progress=progress)
    return _finish("deploy", inv, str(bundle.path), bundle.model_sha256, batches, mf, events, rc, output, started)


def _ssh_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    method = deploy_method(bundle.manifest)
    if method not in (None, "ssh"):          # Ansible reaches hosts over SSH
        raise UsageError(f"{bundle.name} is built for a target deployed over {method}; fleets go over SSH (Ansible)",
                         hint="for Android devices use edgepack deploy --serial SERIAL / verify --serial SERIAL per device")
    return bundle


@contextlib.contextmanager
def _material(bundle, reference, data, trust_model: bool, step):
    """The verification material of a fleet verdict in a private directory (yields its path; None without a
    reference), computed once on this host: the reference model's outputs on ``data`` (else the bundle's samples)."""
    if reference is None:
        yield None
        return
    from .. import api
    work = Path(tempfile.mkdtemp(prefix="edgepack-fleet-verify-"))
    try:
        material, _ = api.device_material(Path(bundle.path), reference, data, trust_model, step or (lambda _m: None),
                                          None)
        material.save(work)
        yield str(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verify(bundle_dir: str | Path, inventory: str | Path, *, reference: str | Path, data: str | Path | None = None,
           limit: str | None = None, batch: str | None = None, release: str | None = None, forks: int = 10,
           timeout: float = 3600.0, trust_model: bool = False, progress: Progress | None = None,
           step: Callable[[str], None] | None = None) -> FleetResult:
    """The verdict of ``bundle_dir`` on every host of the inventory: the reference outputs are computed once here,
    each host runs the inputs with its deployed release (``release``, default ``current``) in its own environment
    and is judged by the emulator's criteria (``HostResult.verdict``/``line``, the device's facts in ``details``).
    Hosts whose outputs differ from the others' are named with the first output that differs and by how much
    (``HostResult.odd``). Never raises for host failures: they are in the result (``ok`` False)."""
    from ..deploy.ondevice import odd_ones_out
    started = time.monotonic()
    require_ansible()
    inv = _check_inventory(inventory)
    batches = parse_batches(batch)
    bundle = _ssh_bundle(bundle_dir)
    remote_dir, _python = _bundle_defaults(bundle)
    with _material(bundle, reference, data, trust_model, step) as material:
        text = playbook_text("verify", name=bundle.name, bundle_expr=str(Path(bundle.path).resolve()),
                             default_dir=remote_dir, batches=batches, timeout=int(min(timeout, 3600)),
                             material=material, release=release)
        rc, events, output = run_playbook(text, inv, limit=limit, forks=forks, timeout=timeout, progress=progress)
        result = _finish("verify", inv, str(bundle.path), bundle.model_sha256, batches, None, events, rc, output, started)
        outputs = {}
        for row in result.hosts:
            if row.verdict in ("MATCH", "MISMATCH"):
                safe = re.sub(r"[^A-Za-z0-9._-]", "_", row.host)
                files = sorted(Path(material).glob(f"outputs/{glob.escape(safe)}-*.npz"),
                               key=lambda p: int(p.stem.rsplit("-", 1)[1]))
                outputs[row.host] = [_load_npz(p) for p in files]
    for host, odd in odd_ones_out(outputs).items():
        row = next(r for r in result.hosts if r.host == host)
        row.odd = odd
    return result


def _load_npz(path: Path) -> dict:
    import numpy as np
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def status(inventory: str | Path, *, bundle_dir: str | Path | None = None, remote_dir: str | None = None,
           limit: str | None = None, forks: int = 10, timeout: float = 900.0, progress: Progress | None = None) -> FleetResult:
    """Per host: current release, files vs manifest, runtime and Python versions, last self-test."""
    started = time.monotonic()
    require_ansible()
    inv = _check_inventory(inventory)
    name, model_sha, python = None, None, "python3"
    if bundle_dir is not None:
        bundle = load_bundle(bundle_dir)
        default_dir, python = _bundle_defaults(bundle)
        name, model_sha = bundle.name, bundle.model_sha256
        remote_dir = remote_dir or default_dir
    text = playbook_text("status", name=name, bundle_expr=None, default_dir=remote_dir, default_python=python, timeout=300)
    rc, events, output = run_playbook(text, inv, limit=limit, forks=forks, timeout=timeout, progress=progress)
    result = _finish("status", inv, str(bundle_dir) if bundle_dir else None, model_sha, [], None, events, rc, output, started)
    for row in result.hosts:
        row.on_bundle = _on(row.release, model_sha)
    return result


def rollback(inventory: str | Path, *, bundle_dir: str | Path | None = None, remote_dir: str | None = None,
             limit: str | None = None, to: str | None = None, forks: int = 10, timeout: float = 900.0,
             progress: Progress | None = None) -> FleetResult:
    """Switch ``current`` back to the previous release on every host (checksummed there first)."""
    started = time.monotonic()
    require_ansible()
    inv = _check_inventory(inventory)
    name = None
    if bundle_dir is not None:
        bundle = load_bundle(bundle_dir)
        name = bundle.name
        remote_dir = remote_dir or _bundle_defaults(bundle)[0]
    text = playbook_text("rollback", name=name, bundle_expr=None, default_dir=remote_dir, to=to, timeout=300)
    rc, events, output = run_playbook(text, inv, limit=limit, forks=forks, timeout=timeout, progress=progress)
    return _finish("rollback", inv, str(bundle_dir) if bundle_dir else None, None, [], None, events, rc, output, started)


def export(bundle_dir: str | Path, out_dir: str | Path, *, batch: str | None = None, max_fail: str | None = None,
           smoke: bool = True, install: bool = False, keep: int = 3) -> dict:
    """Write a self-contained playbook directory for users who run Ansible themselves (AWX, CI):
    deploy.yml, status.yml, rollback.yml, ansible.cfg, action_plugins/, files/<bundle>/ and an
    example inventory. The controller needs edgepack installed (the action runs its release protocol)."""
    bundle = load_bundle(bundle_dir)
    batches = parse_batches(batch)
    mf = parse_max_fail(max_fail)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / ".edgepack-export").exists():
        raise UsageError(f"{out} exists and is not an edgepack export; refusing to write into it",
                         hint="pass an empty or new directory to -o")
    remote_dir, python = _bundle_defaults(bundle)
    out.mkdir(parents=True, exist_ok=True)
    files = out / "files" / check_name(bundle.name)
    if files.exists():
        shutil.rmtree(files)
    shutil.copytree(bundle.path, files, symlinks=False)
    bundle_expr = "{{ playbook_dir }}/files/" + bundle.name
    header = (f"Generated by edgepack for bundle {bundle.name} (model sha256 {bundle.model_sha256[:12]}).\n"
              "Needs edgepack on the controller: pip install 'edgepack[fleet]'.\n"
              "Per-host inventory variables: edgepack_remote_dir, edgepack_python, edgepack_runtime.")
    (out / "deploy.yml").write_text(playbook_text("deploy", name=bundle.name, bundle_expr=bundle_expr, default_dir=remote_dir,
                                                  batches=batches, max_fail=mf, keep=keep, smoke=smoke, install=install,
                                                  header=header))
    (out / "status.yml").write_text(playbook_text("status", name=bundle.name, bundle_expr=None, default_dir=remote_dir,
                                                  default_python=python, header=header))
    (out / "rollback.yml").write_text(playbook_text("rollback", name=bundle.name, bundle_expr=None, default_dir=remote_dir,
                                                    header=header))
    (out / "action_plugins").mkdir(exist_ok=True)
    shutil.copy2(PLUGINS / "action" / "edgepack_release.py", out / "action_plugins" / "edgepack_release.py")
    (out / "ansible.cfg").write_text(
        "[defaults]\naction_plugins = ./action_plugins\nhost_key_checking = True\nretry_files_enabled = False\n"
        "interpreter_python = auto_silent\n\n[ssh_connection]\n"
        "ssh_args = -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=auto -o ControlPersist=30s\n"
        "usetty = False\n")
    (out / "inventory.example.ini").write_text(
        "[devices]\npi-01 ansible_host=192.168.1.21 ansible_user=pi\n"
        f"pi-02 ansible_host=192.168.1.22 ansible_user=pi edgepack_remote_dir=/opt/edgepack/{bundle.name} "
        "edgepack_python=/usr/bin/python3 edgepack_runtime=tflite-runtime\n")
    (out / ".edgepack-export").write_text(json.dumps({"bundle": bundle.name, "model_sha256": bundle.model_sha256}) + "\n")
    return {"ok": True, "output": str(out), "bundle": bundle.name, "model_sha256": bundle.model_sha256,
            "playbooks": ["deploy.yml", "status.yml", "rollback.yml"],
            "run": f"cd {out} && cp inventory.example.ini inventory.ini && $EDITOR inventory.ini && "
                   "ansible-playbook -i inventory.ini deploy.yml"}
