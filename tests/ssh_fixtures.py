"""pytest plugin: a real OpenSSH server on loopback standing in for a Raspberry Pi.

Load it with ``pytest_plugins = ["tests.ssh_fixtures"]`` (conftest.py) or import ``ssh_server``.

``ssh_server`` (session) runs ``/usr/sbin/sshd -D -e -f <generated config>`` as the current user
on a free 127.0.0.1 port with its own ed25519 host key, and authorizes a freshly generated test key
(no passphrase). It yields an :class:`SshServer` whose ``config`` is a client ssh config that pins
the host key in its own known_hosts file (strict checking stays on), so
``ssh -F server.config server.host true`` works without touching ~/.ssh. The "device" filesystem is
this machine's: tests deploy into their own ``tmp_path``. Skips only when sshd/ssh/ssh-keygen are
missing (or sshd's privilege separation directory cannot be made).
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    port: int
    user: str
    dir: Path
    key: Path               # the authorized client key (private)
    host_key_line: str      # "ssh-ed25519 AAAA..." of the server
    known_hosts: Path       # pins host_key_line for [127.0.0.1]:port
    config: Path            # client config using key + known_hosts
    proc: subprocess.Popen

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def client_config(self, name: str, known_hosts_text: str) -> Path:
        """Another client config, identical but with its own known_hosts content (host-key tests)."""
        kh = self.dir / f"known_hosts-{name}"
        kh.write_text(known_hosts_text)
        cfg = self.dir / f"ssh_config-{name}"
        cfg.write_text(_client_config(self.key, kh))
        return cfg

    def ssh(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.config), "-p", str(self.port), "-o", "BatchMode=yes",
                               f"{self.user}@127.0.0.1", command], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def _client_config(key: Path, known_hosts: Path) -> str:
    return (f"Host 127.0.0.1\n"
            f"  IdentityFile {key}\n"
            f"  IdentitiesOnly yes\n"
            f"  IdentityAgent none\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            f"  PasswordAuthentication no\n"
            f"  KbdInteractiveAuthentication no\n")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepack-test", "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)


def start_sshd(base: Path) -> SshServer:
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: openssh-server / openssh-client); "
                        "the SSH deploy tests need a real OpenSSH server")
    if not Path("/run/sshd").is_dir():  # sshd refuses to start without its privilege separation dir
        try:
            Path("/run/sshd").mkdir(mode=0o755, parents=True)
        except OSError as exc:
            pytest.skip(f"sshd needs /run/sshd, which cannot be created here: {exc}")
    base.mkdir(parents=True, exist_ok=True)
    host_key, client_key = base / "ssh_host_ed25519_key", base / "id_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (base / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    user = getpass.getuser()
    port = _free_port()
    host_line = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_line}\n")
    config = base / "ssh_config"
    config.write_text(_client_config(client_key, known_hosts))
    sshd_config = base / "sshd_config"
    sshd_config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {base / 'sshd.pid'}",
        f"AuthorizedKeysFile {base / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "PrintMotd no",
        "Subsystem sftp internal-sftp", "MaxStartups 100:30:200", "MaxSessions 50", "LogLevel ERROR", ""]))
    log = open(base / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(sshd_config)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = SshServer(port=port, user=user, dir=base, key=client_key, host_key_line=host_line,
                       known_hosts=known_hosts, config=config, proc=proc)
    deadline = time.monotonic() + 20
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            res = server.ssh("true", timeout=10)
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0:
            return server
        last = res.stderr.strip()
        time.sleep(0.2)
    stop_sshd(server)
    raise RuntimeError(f"sshd did not come up: {last}\n{(base / 'sshd.log').read_text(errors='replace')}")


def stop_sshd(server: SshServer) -> None:
    proc = server.proc
    if proc.poll() is None:
        try:  # the whole group: sshd and any per-connection children still around
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)
