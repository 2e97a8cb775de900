"""edgepack fleet on N real OpenSSH servers on loopback (one sshd, host key and root directory per
simulated device): devices per minute at batch 1, 5 and all, bytes sent per device, and the time to
roll one device back.

    .venv/bin/python benchmarks/fleet.py [N_DEVICES=12] [--smoke]

Each rollout goes to fresh remote directories (first deploy: the whole bundle travels), then the
second bundle goes over the first (only what differs travels). Times include ansible-playbook's own
start-up (~1.5-2 s). The device Python for --smoke is this venv's.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from packager import fleet
    from tests.deploy_helpers import build_bundles
    from tests.ssh_fixtures import start_sshd, stop_sshd

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 12
    smoke = "--smoke" in sys.argv
    tmp = Path(tempfile.mkdtemp(prefix="edgepack-fleet-bench-"))
    bundles = build_bundles(ROOT / ".pytest_cache" / "d" / "edgepack-deploy-test-bundles")
    a, b = bundles[("rpi", "a")], bundles[("rpi", "b")]
    servers = []
    try:
        for i in range(n):
            servers.append(start_sshd(tmp / f"sshd{i}"))

        def inventory(tag: str) -> Path:
            inv = tmp / f"inv-{tag}.ini"
            inv.write_text("[devices]\n" + "".join(
                f"dev{i} ansible_host=127.0.0.1 ansible_port={s.port} ansible_user={s.user} "
                f"ansible_ssh_common_args='-F {s.config}' edgepack_remote_dir={tmp / tag / f'dev{i}'} "
                f"edgepack_python={sys.executable}\n" for i, s in enumerate(servers)))
            return inv

        print(f"{n} devices (one sshd each), smoke={'on' if smoke else 'off'}, forks 10")
        print("| batch | first deploy: s | devices/min | bytes/device | second bundle over it: s | devices/min | bytes/device |")
        print("|---|---|---|---|---|---|---|")
        last_inv = None
        for batch in ("1", "5", None):
            inv = inventory(f"b{batch or 'all'}")
            row = [batch or "all"]
            for bundle in (a, b):
                t0 = time.monotonic()
                res = fleet.deploy(bundle, inv, batch=batch, smoke=smoke)
                dt = time.monotonic() - t0
                assert res.ok, [(h.host, h.outcome, h.reason) for h in res.hosts if h.outcome != "deployed"]
                per = sum(h.bytes_sent for h in res.hosts) / len(res.hosts)
                row += [f"{dt:.1f}", f"{n / dt * 60:.0f}", f"{per:.0f}"]
            print("| " + " | ".join(row) + " |")
            last_inv = inv
        t0 = time.monotonic()
        res = fleet.rollback(last_inv, bundle_dir=b, limit="dev0")
        print(f"rollback of one device: {time.monotonic() - t0:.1f} s ({res.hosts[0].outcome})")
        t0 = time.monotonic()
        res = fleet.deploy(b, last_inv, batch=None, smoke=smoke)
        print(f"re-run after that rollback ({n - 1} devices current, 1 switched again): {time.monotonic() - t0:.1f} s, "
              f"bytes: {sorted({h.bytes_sent for h in res.hosts})}")
        t0 = time.monotonic()
        res = fleet.status(last_inv, bundle_dir=b)
        print(f"status of {n} devices: {time.monotonic() - t0:.1f} s")
    finally:
        for s in servers:
            stop_sshd(s)


if __name__ == "__main__":
    main()
