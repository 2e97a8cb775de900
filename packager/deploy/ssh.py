"""Deploy over SSH with the system OpenSSH client, so ~/.ssh/config, agents, ProxyJump and
certificates work as they do for the user.

Host keys are checked strictly (``StrictHostKeyChecking=yes``): an unknown or changed key stops the
deploy before any remote command runs, with the steps to enrol the host. Files travel as one tar
stream over ``ssh HOST 'cd STAGING && tar -xf -'`` (no scp/sftp path quoting differences between
OpenSSH versions); the release protocol checksums them on the device afterwards.

A deploy makes four remote calls (plus smoke/install). They share one authenticated connection: ``connect()``
starts ``ssh -M -N`` (a ControlMaster owned by this transport, in a private 0700 socket directory)
and ``close()`` stops it, so the key exchange happens once per deploy instead of once per call.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO, Sequence

from ..contain import lifecycle
from ..errors import DeployError, UsageError
from .base import Completed, Transport, q, run_process, tar_upload

# USER@HOST[:PORT]; HOST may be a name, an ssh_config alias, an IPv4 address or [IPv6].
_HOST_SPEC = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9]+)?\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]{1,5}))?\Z")

_HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "has changed and you have requested strict checking",
                     "Host key for", "Offending")
_HOST_KEY_UNKNOWN = ("host key is known for", "Host key verification failed")
#: ssh gave up on a connection that stopped answering (ServerAliveInterval x ServerAliveCountMax).
_STALLED = ("not responding", "Timeout, server")
ALIVE_INTERVAL, ALIVE_COUNT = 10, 3
_UNREACHABLE = ("Connection refused", "Connection timed out", "timed out", "Could not resolve hostname",
                "No route to host", "Network is unreachable", "Connection closed", "Connection reset",
                "kex_exchange_identification", "Broken pipe")


def parse_host(spec: str) -> tuple[str | None, str, int | None]:
    """``USER@HOST[:PORT]`` -> (user, host, port). Rejects anything ssh could read as an option."""
    m = _HOST_SPEC.match(spec or "")
    if not m:
        raise UsageError(f"--host {spec!r} is not USER@HOST[:PORT]",
                         hint="e.g. --host pi@raspberrypi.local or --host pi@192.168.1.20:2222 or an alias from ~/.ssh/config")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--host {spec!r}: port {port} is out of range")
    host = m["host"]
    if host.startswith("["):
        host = host[1:-1]
    return m["user"], host, port


class SshTransport(Transport):
    """Devices reached with the system OpenSSH client (``deploy = "ssh"``), addressed ``USER@HOST[:PORT]``:
    BatchMode, strict host keys, and with ``multiplex`` one ControlMaster connection for every call."""
    method = "ssh"
    tool = "ssh"
    tool_package = "openssh-client"
    tool_hint = "install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)"
    address = "--host USER@HOST"
    remote_dir = "~/edgepack/{name}"
    device_tools_hint = "install coreutils and tar on the device"
    supports_install = True
    home_expr = '"$HOME"'
    required_tools = ("sha256sum", "tar")
    label = "SSH"
    cli_option = "--host"
    cli_metavar = "USER@HOST[:PORT]"
    cli_verify_help = ("Compute the verdict on this device over SSH: the inputs go there, the deployed release runs "
                       "them with its own script in the device's environment, the outputs come back and are judged "
                       "here.")
    cli_help = ("Deploy over SSH (system OpenSSH: ~/.ssh/config, agent and jump hosts apply). Host keys are "
                "checked strictly; enrol a new device first with ssh-keyscan.")
    cli_example = "--host pi@raspberrypi.local"
    cli_common = ("ssh_config",)

    @classmethod
    def from_cli(cls, value: str | None, *, timeout: float, ssh_config=None, **_) -> "SshTransport":
        """``--host USER@HOST[:PORT]`` (with ``--ssh-config FILE``); UsageError without a host."""
        if not value:
            raise UsageError("this bundle's target deploys over SSH: pass --host USER@HOST[:PORT]",
                             hint="e.g. " + cls.cli_example)
        return cls(value, ssh_config=ssh_config, timeout=timeout)

    def __init__(self, host: str, *, ssh_config: str | os.PathLike | None = None, timeout: float = 60.0,
                 connect_timeout: float = 10.0, ssh_bin: str = "ssh", env: dict | None = None,
                 multiplex: bool = True):
        super().__init__(timeout)
        self.user, self.host, self.port = parse_host(host)
        self.spec = host
        self.ssh_config = Path(ssh_config).expanduser() if ssh_config else None
        if self.ssh_config is not None and not self.ssh_config.is_file():
            raise UsageError(f"--ssh-config {self.ssh_config}: no such file")
        self.connect_timeout = max(1, int(connect_timeout))
        self.ssh_bin = ssh_bin
        self.env = {**os.environ, **env} if env else None
        self._effective: dict[str, str] = {}
        self.multiplex = multiplex
        self._master: subprocess.Popen | None = None
        self._control_path: str | None = None
        self._finalizer = None

    # ------------------------------------------------------------------ argv
    def _options(self) -> list[str]:
        argv = [self.ssh_bin]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"ConnectTimeout={self.connect_timeout}",
                 "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
                 "-o", "LogLevel=ERROR"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return argv

    def _command_options(self) -> list[str]:
        argv = self._options()
        if self._control_path is not None:
            argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={self._control_path}"]
        return argv

    def _destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def describe(self) -> str:
        """``USER@HOST:PORT``, user and port only when given."""
        dest = self._destination()
        return f"{dest}:{self.port}" if self.port else dest

    # ------------------------------------------------------------------ connect
    def _effective_config(self) -> dict[str, str]:
        """What ssh will really use (``ssh -G``): hostname, port, user, known-hosts file for hints."""
        res = run_process(self._options() + ["-G", "--", self._destination()], timeout=15,
                          what="ssh -G (reading the ssh configuration)", env=self.env, missing_hint=self.tool_hint)
        if res.rc != 0:
            raise UsageError(f"ssh cannot use this configuration: {res.last_error_line()}",
                             hint="check --ssh-config and ~/.ssh/config")
        conf: dict[str, str] = {}
        for line in res.out.splitlines():
            key, _, value = line.partition(" ")
            conf.setdefault(key.lower(), value.strip())
        return conf

    def connect(self) -> None:
        """Read ``ssh -G`` once, then start the ControlMaster: host key and login are checked there."""
        if not self._effective:
            self._effective = self._effective_config()
        if self.multiplex:
            self._start_master()

    def _start_master(self) -> None:
        """One authenticated connection for all later calls; host key and login are checked here."""
        if self._master is not None and self._master.poll() is None:
            return
        self.close()
        # mkdtemp: a fresh 0700 directory; in /tmp because socket paths must stay short (< 104 bytes)
        cm_dir = tempfile.mkdtemp(prefix="edgepack-ssh-", dir="/tmp" if os.path.isdir("/tmp") else None)  # noqa: S108
        lifecycle.register_dir(cm_dir)
        path = os.path.join(cm_dir, "cm")
        log_path = os.path.join(cm_dir, "master.log")
        argv = self._options() + ["-M", "-N", "-o", "ControlPersist=no", "-o", f"ControlPath={path}",
                                  "--", self._destination()]
        try:
            with open(log_path, "wb") as log:
                master = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                          env=self.env, start_new_session=True, **lifecycle.popen_kwargs())
        except FileNotFoundError:
            shutil.rmtree(cm_dir, ignore_errors=True)
            lifecycle.unregister_dir(cm_dir)
            return  # run_process reports the missing ssh client on the first call
        lifecycle.register_process(master.pid, group=True)  # a killed deploy leaves no master behind
        self._master, self._control_path = master, None
        self._finalizer = weakref.finalize(self, _stop_master, master, cm_dir)
        deadline = time.monotonic() + self.connect_timeout + 20
        while not os.path.exists(path):
            if master.poll() is not None:
                with open(log_path, "rb") as fh:
                    err = fh.read()
                self.close()
                raise self._classify(Completed(255, b"", err))
            if time.monotonic() > deadline:
                self.close()
                raise DeployError(f"ssh to {self.describe()} timed out while connecting",
                                  hint="check the address and that sshd runs, or raise --timeout")
            time.sleep(0.02)
        self._control_path = path

    def close(self) -> None:
        """Stop the ControlMaster and remove its socket directory."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._master = None
        self._control_path = None

    def _keyscan_hints(self) -> tuple[str, str, str, str]:
        conf = self._effective or {}
        hostname = conf.get("hostname", self.host)
        port = conf.get("port", str(self.port or 22))
        known = (conf.get("userknownhostsfile", "~/.ssh/known_hosts").split() or ["~/.ssh/known_hosts"])[0]
        name = hostname if port == "22" else f"[{hostname}]:{port}"
        return hostname, port, known, name

    def _classify(self, res: Completed, elapsed: float = 0.0) -> DeployError:
        """The DeployError for ssh's own failure (exit 255): host key changed/unknown, login refused, no answer
        (``elapsed``: seconds the call ran), unreachable, or ssh's last line."""
        err = res.err
        hostname, port, known, name = self._keyscan_hints()
        port_flag = f"-p {port} " if port != "22" else ""
        enrol = f"ssh-keyscan {port_flag}{q(hostname)} >> {known}"
        fingerprint = (f"compare `ssh-keyscan {port_flag}{q(hostname)} | ssh-keygen -lf -` with the fingerprint shown "
                       "on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")
        if any(s in err for s in _HOST_KEY_CHANGED):
            return DeployError(
                f"the host key of {self.describe()} has CHANGED since it was enrolled in {known}; nothing was run on the device",
                hint=(f"if the device was reinstalled: {fingerprint}, then remove the old key with "
                      f"ssh-keygen -R {q(name)} -f {known} and enrol the new one: {enrol}. "
                      "Otherwise someone may be intercepting the connection."))
        if any(s in err for s in _HOST_KEY_UNKNOWN):
            return DeployError(
                f"the host key of {self.describe()} is unknown (not in {known}); nothing was run on the device",
                hint=f"{fingerprint}; if they match, enrol the host: {enrol}")
        if "Permission denied" in err or "Too many authentication failures" in err:
            return DeployError(f"{self.describe()} refused the login: {res.last_error_line()}",
                               hint=("deploy never prompts for passwords (BatchMode): install your key on the device "
                                     f"(ssh-copy-id {port_flag}{self._destination()}) and load it in ssh-agent"))
        if any(s in err for s in _STALLED) or (res.rc == 255 and not err.strip() and elapsed >= ALIVE_INTERVAL):
            return DeployError(f"no answer from {self.describe()} for {ALIVE_INTERVAL * ALIVE_COUNT} s"
                               + (f" (after {elapsed:.0f} s in all)" if elapsed else "") + "; ssh gave up",
                               hint="the device or its network stopped responding (asleep, rebooted, off Wi-Fi); "
                                    "check it, then run the command again: a deploy cut off leaves current unchanged")
        if any(s in err for s in _UNREACHABLE):
            return DeployError(f"cannot reach {self.describe()}: {res.last_error_line()}",
                               hint="check the address, that the device is on and sshd runs, or raise --timeout")
        return DeployError(f"ssh to {self.describe()} failed: {res.last_error_line()}")

    # ------------------------------------------------------------------ commands
    def _ssh(self, script: str, *, timeout: float, stdin: IO[bytes] | None = None) -> Completed:
        argv = self._command_options() + ["--", self._destination(), script]
        started = time.monotonic()
        res = run_process(argv, timeout=timeout, what=f"ssh to {self.describe()}", stdin=stdin, env=self.env,
                          missing_hint=self.tool_hint)
        if res.rc == 255:  # ssh's own failure; edgepack's scripts never exit 255
            raise self._classify(res, time.monotonic() - started)
        return res

    def sh(self, script: str, *, timeout: float | None = None, stdin: IO[bytes] | None = None) -> Completed:
        """Over ssh (through the master); ssh's own exit 255 raises a DeployError saying why."""
        return self._ssh(script, timeout=timeout or self.timeout, stdin=stdin)

    def upload(self, files: Sequence[tuple[Path, str]], dest_dir: str, *, timeout: float | None = None,
               prepare: str | None = None) -> int:
        """One tar stream into ``tar -xf -`` in ``dest_dir``, ``prepare`` first; returns the tar's bytes."""
        return tar_upload(self, files, dest_dir, timeout=timeout, prepare=prepare)

    def download(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """``cat`` over ssh into ``NAME.part``, renamed to ``local_path``."""
        res = self.sh(f"cat {q(remote_path)}", timeout=timeout or self.timeout)
        if res.rc != 0:
            raise DeployError(f"cannot read {remote_path} on {self.describe()}: {res.last_error_line()}")
        local_path = Path(local_path)
        tmp = local_path.with_name(local_path.name + ".part")
        tmp.write_bytes(res.stdout)
        os.replace(tmp, local_path)
        return len(res.stdout)


def _stop_master(master: subprocess.Popen, cm_dir: str) -> None:
    if master.poll() is None:
        master.terminate()
        try:
            master.wait(5)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(5)
    shutil.rmtree(cm_dir, ignore_errors=True)
    lifecycle.unregister_process(master.pid, group=True)
    lifecycle.unregister_dir(cm_dir)
