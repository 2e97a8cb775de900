"""The release protocol of ``packager.deploy.releases`` run over Ansible's own connection to a host.

The ``edgepack_release`` action plugin (``plugins/action``) runs on the Ansible controller, once per
host, and hands its connection to :class:`AnsibleTransport`; then it calls exactly the functions
``edgepack deploy/status/rollback`` call (``releases.deploy``, ``releases.status``, ``releases.rollback``).
There is no second copy of the on-device steps: staging, sha256 of every file on the device, the
atomic switch of ``current``, smoke run with switch-back, prune are the same code for one device and
for a fleet. Whatever Ansible's connection does (ssh_config, jump hosts, become) applies; host keys are
checked strictly (``StrictHostKeyChecking=yes`` is put first on ssh's command line, and
``host_key_checking`` cannot be turned off for these tasks).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO

from ..deploy import releases
from ..deploy.base import Completed, Transport, tar_upload
from ..errors import DeployError, EdgepackError, UsageError

STRICT_SSH_ARGS = "-o StrictHostKeyChecking=yes -o BatchMode=yes"


class AnsibleTransport(Transport):
    """A host reached through the connection of a running Ansible action plugin."""

    method = "ssh"                        # what an Ansible host is: an SSH device (its target profile's defaults)
    remote_dir = "~/edgepack/{name}"
    device_tools_hint = "install coreutils, tar and base64 on the device"
    supports_install = True
    home_expr = '"$HOME"'
    required_tools = ("sha256sum", "tar")

    def __init__(self, action, name: str, timeout: float = 60.0):
        super().__init__(timeout)
        self._action = action
        self._name = name

    def describe(self) -> str:
        """The host's inventory name."""
        return self._name

    def connect(self) -> None:
        """Ansible connects lazily on the first command; host key and login are checked there."""

    def sh(self, script: str, *, timeout: float | None = None, stdin: IO[bytes] | None = None) -> Completed:
        """Through the action's connection with /bin/sh (``timeout`` unused); rc 255 is a connection failure."""
        from ansible.errors import AnsibleConnectionFailure
        data = stdin.read() if stdin is not None else None
        res = self._action._low_level_execute_command(script, sudoable=True, in_data=data or None,
                                                      executable="/bin/sh", encoding_errors="surrogateescape")
        out = str(res.get("stdout", "")).encode("utf-8", "surrogateescape")
        err = str(res.get("stderr", "")).encode("utf-8", "surrogateescape")
        rc = int(res.get("rc", 1))
        if rc == 255:  # ssh's own failure (edgepack's scripts never exit 255): Ansible marks the host unreachable
            raise AnsibleConnectionFailure(f"ssh to {self._name} failed: {Completed(rc, out, err).last_error_line()}")
        return Completed(rc, out, err)

    def upload(self, files, dest_dir: str, *, timeout: float | None = None, prepare: str | None = None) -> int:
        """One tar stream into staging, as over plain ssh (it only needs ``sh`` with stdin); returns its bytes."""
        return tar_upload(self, files, dest_dir, timeout=timeout, prepare=prepare)

    def download(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """One remote file through the action's connection, base64 on the wire (Ansible's command results are text);
        returns its size. The caller checksums it. Raises DeployError when the device cannot read or encode it."""
        import base64
        import binascii
        res = self.sh(f"base64 < {releases.q(remote_path)}", timeout=timeout)
        if res.rc != 0:
            raise DeployError(f"cannot read {remote_path} on {self._name}: {res.last_error_line()}",
                              hint="the device needs base64 (coreutils or busybox)")
        try:
            data = base64.b64decode(b"".join(res.stdout.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DeployError(f"{remote_path} came back from {self._name} garbled ({exc})", hint="run again") from None
        local_path.write_bytes(data)
        return len(data)


def harden_connection(action) -> None:
    """Strict host keys and no pty, whatever the inventory says (our ssh options come first, and
    ssh keeps the first value it sees for an option)."""
    conn = action._connection
    try:
        if conn.get_option("use_tty"):
            conn.set_option("use_tty", False)   # a pty would merge stderr into stdout and add \r
    except KeyError:
        pass
    try:
        conn.set_option("host_key_checking", True)
        args = conn.get_option("ssh_args") or ""
        conn.set_option("ssh_args", f"{STRICT_SSH_ARGS} {args}".strip())
    except KeyError:  # not an ssh connection (local, paramiko...): nothing to harden here
        pass


def jsonable(value):
    """``value`` (a dataclass, or anything JSON holds; other objects as str) as plain JSON data."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def _arg_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _runtime(value) -> str | None:
    if not value:
        return None
    name = str(value).strip().replace("-", "_")
    from device_runtime.edgepack_run import RUNTIMES
    if name not in RUNTIMES:
        raise UsageError(f"edgepack_runtime {value!r} is not a runtime the device script knows",
                         hint="use " + ", ".join(r.replace("_", "-") for r in RUNTIMES))
    return name


def device_info(transport: Transport, rdir: str, python: str, runtime: str | None) -> dict | None:
    """``PYTHON DIR/current/edgepack_run.py --info``: runtime, Python, numpy and CPU of the device."""
    token = releases._python_token(transport, python)
    rt = f" --runtime {releases.q(runtime)}" if runtime else ""
    res = transport.sh(f"{token} {releases.q(rdir + '/current/edgepack_run.py')} --info{rt}", timeout=120)
    info = releases._last_json(res.out)
    if info is None:
        return {"error": releases._script_failure(res, python, "--info")}
    return info


def verify_host(t: Transport, name: str, spec: str, args: dict, python: str | None, runtime: str | None) -> dict:
    """``fleet verify`` on one host: the material's inputs run by the host's deployed release
    (:func:`packager.deploy.ondevice.verify_device`); the outputs are saved next to the material as
    ``outputs/<host>-<group>.npz`` for the comparison across hosts; returns the host's verdict as JSON."""
    import re

    import numpy as np

    from ..bundle.files import npz_stored
    from ..deploy.ondevice import Material, verdict_line, verify_device
    material = Material.load(args["material"])
    bundle = releases.load_bundle(args["bundle"])
    result, ran = verify_device(t, spec, bundle, material, release=args.get("release") or None, device_python=python,
                                runtime=runtime)
    where = Path(args["material"]) / "outputs"
    where.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    for k, group in enumerate(ran.outputs):
        (where / f"{safe}-{k}.npz").write_bytes(npz_stored({n: np.asarray(v) for n, v in group.items()}))
    return {"result": jsonable(result.to_json()), "info": jsonable(ran.info), "line": verdict_line(result),
            "passed": result.status == "passed", "outputs": safe, "remote_dir": ran.remote_dir, "release": ran.release,
            "seconds": ran.seconds, "chunks": ran.chunks, "bytes_sent": ran.bytes_sent}


def run_op(action, args: dict, task_vars: dict) -> dict:
    """One fleet operation on one host; returns the task result (``failed``/``changed``/``msg`` +
    ``edgepack`` data). Connection failures propagate, so Ansible marks the host unreachable."""
    harden_connection(action)
    name = str(task_vars.get("inventory_hostname", "?"))
    op = args.get("op", "deploy")
    spec = str(args.get("remote_dir") or "")
    python = args.get("device_python") or None
    t = AnsibleTransport(action, name, timeout=float(args.get("timeout", 60)))
    out: dict = {"changed": False, "edgepack_op": op}
    try:
        runtime = _runtime(args.get("runtime"))
        if not spec:
            raise UsageError("no remote directory for this host", hint="set edgepack_remote_dir in the inventory")
        if op == "deploy":
            material = None
            if args.get("verify_material"):
                from ..deploy.ondevice import Material
                material = Material.load(args["verify_material"])
            res = releases.deploy(args["bundle"], t, remote_dir=spec, keep=int(args.get("keep", 3)),
                                  install=_arg_bool(args.get("install")), smoke=_arg_bool(args.get("smoke")),
                                  device_python=python, runtime=runtime, verify=material)
            out.update(changed=res.changed, edgepack=jsonable(res))
        elif op == "verify":
            out.update(edgepack=verify_host(t, name, spec, args, python, runtime))
        elif op == "rollback":
            res = releases.rollback(t, spec, to=args.get("to") or None)
            out.update(changed=True, edgepack=jsonable(res))
        elif op == "status":
            st = releases.status(t, spec, verify=True)
            data = jsonable(st)
            data["selftest"] = releases.last_selftest(t, st.remote_dir) if st.exists else None
            data["info"] = None
            if st.current is not None:
                py = python or (f"{st.remote_dir}/venv/bin/python" if st.venv else
                                 st.python or args.get("default_python") or "python3")
                data["info"] = device_info(t, st.remote_dir, py, runtime)
                data["info"]["device_python"] = py
            out.update(edgepack=data)
        else:
            raise UsageError(f"unknown edgepack_release op {op!r}")
    except EdgepackError as exc:
        out.update(failed=True, msg=exc.message,
                   edgepack_error={"message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code,
                                   "kind": type(exc).__name__, "gate": jsonable(getattr(exc, "gate", None))})
        if op in ("deploy", "rollback") and spec:
            try:  # where the host is now, after the protocol put it back
                st = releases.status(t, spec, verify=False)
                out["edgepack_state"] = {"current": st.current, "previous": st.previous,
                                         "remote_dir": st.remote_dir, "releases": [r.id for r in st.releases]}
            except Exception:  # noqa: BLE001,S110 - best effort; the error above is what matters
                pass
    return out
