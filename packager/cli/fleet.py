"""`edgepack fleet deploy|status|rollback|export`: many devices through Ansible (docs/fleet.md).

Renders what ``packager.fleet`` returns: a table per host, or exactly one JSON document on stdout
with --json (also on failure). Exit codes as everywhere: 2 bad input, 5 ansible-core missing,
6 some host is not where it should be (the table/JSON says which and why)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .boundary import command
from ..errors import DeployError

fleet_app = typer.Typer(name="fleet", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        rich_markup_mode=None,
                        help="Roll one bundle out to many devices with Ansible: batches, max-fail, per-host "
                             "verification and switch-back (docs/fleet.md). Needs: pip install 'edgepack[fleet]'.")

InvOpt = Annotated[Path, typer.Option("--inventory", "-i", metavar="INVENTORY",
                                      help="Ansible inventory (INI/YAML file, directory or script). Per-host variables "
                                           "edgepack_remote_dir, edgepack_python, edgepack_runtime override the target.")]
LimitOpt = Annotated[Optional[str], typer.Option("--limit", "-l", metavar="PATTERN",
                                                 help="Only these hosts (Ansible pattern, e.g. 'pi-0*' or 'all:!lab').")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout (also on failure).")]
ForksOpt = Annotated[int, typer.Option("--forks", min=1, help="Hosts worked on in parallel within a batch.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=10.0,
                                           help="Stop the whole operation after this long.")]
RemoteDirOpt = Annotated[Optional[str], typer.Option("--remote-dir", metavar="DIR",
                                                     help="Directory on the devices when no BUNDLE names it "
                                                          "(edgepack_remote_dir in the inventory wins).")]
OptBundle = Annotated[Optional[Path], typer.Argument(metavar="[BUNDLE]", show_default=False,
                                                     help="The bundle: its name and target give the remote dir.")]

_out = Console()
_err = Console(stderr=True)
# Columns whose values are never split across lines (release ids, byte counts, versions); the
# free-text columns (why, problems) wrap instead.
_WHOLE = {"outcome", "current release", "sent", "smoke", "files", "python", "from", "to / current"}


def _progress(enabled: bool):
    from .render import state
    if not enabled or state["quiet"]:      # `edgepack --quiet deploy ...`
        return None

    def show(ev: dict) -> None:
        if ev.get("event") != "host":
            return
        res = ev.get("result") or {}
        data = res.get("edgepack") or {}
        msg = (res.get("edgepack_error") or {}).get("message") or res.get("msg") or ""
        detail = data.get("release") or data.get("to_release") or data.get("current") or msg
        _err.print(f"[dim]{ev.get('status', ''):>11}[/dim] {escape(str(ev.get('host')))}  {escape(str(detail))[:160]}",
                   highlight=False)
    return show


def _fail_if_needed(result, as_json: bool, what: str) -> None:
    from .render import emit_json
    bad = [h for h in result.hosts if h.outcome not in {"deploy": ("deployed", "current"), "rollback": ("rolled back",),
                                                         "status": ("ok",)}[result.op]]
    data = result.to_json()
    if not bad:
        if as_json:
            emit_json(data)
        return
    names = ", ".join(f"{h.host} ({h.outcome})" for h in bad[:8]) + (" ..." if len(bad) > 8 else "")
    err = DeployError(f"{len(bad)} of {len(result.hosts)} hosts {what}: {names}"
                      + ("; the rollout stopped early (max-fail)" if result.stopped else ""),
                      hint="see the reason per host above; re-running the same command resumes (hosts already "
                           "current send nothing)" if result.op == "deploy" else "see the reason per host above")
    err.fleet = data
    raise err


def _deploy_table(result) -> Table:
    t = Table(title=f"fleet deploy {Path(result.bundle).name if result.bundle else ''} "
                    f"(model {str(result.model_sha256)[:12]}), batches {result.batches or ['all']}"
                    + (f", max-fail {result.max_fail}" if result.max_fail else ""), title_justify="left")
    for col in ("host", "outcome", "current release", "sent", "smoke", "why"):
        t.add_column(col, overflow="fold", no_wrap=col in _WHOLE)
    colors = {"deployed": "green", "current": "green", "rolled back": "yellow", "failed": "red",
              "unreachable": "red", "not reached": "dim"}
    for h in result.hosts:
        smoke = {True: "passed", False: "FAILED", None: "-"}[h.smoke]
        t.add_row(h.host, f"[{colors.get(h.outcome, 'white')}]{h.outcome}[/]", h.release or "-",
                  f"{h.uploaded} files, {h.bytes_sent} B" if h.outcome in ("deployed", "current") else "-",
                  smoke, escape(h.reason or ""))
    return t


@fleet_app.command("deploy")
@command
def deploy_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory built by `edgepack build`.", show_default=False)],
    inventory: InvOpt, limit: LimitOpt = None,
    batch: Annotated[Optional[str], typer.Option("--batch", metavar="N,P%,...",
                                                 help="Batches (Ansible serial): e.g. 1,10%,100% = one host, then 10% "
                                                      "of the hosts at a time, then the rest [default: all at once].")] = None,
    max_fail: Annotated[Optional[str], typer.Option("--max-fail", metavar="P%",
                                                    help="Stop the rollout when more than P% of a batch fails "
                                                         "(Ansible max_fail_percentage; 0% = at the first failure).")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Run the bundled self-test on each host after switching; "
                                                         "a host whose test fails is switched back.")] = False,
    install: Annotated[bool, typer.Option("--install", help="Create DIR/venv on each host and pip install the "
                                                             "bundle's requirements.txt.")] = False,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Releases kept per host.")] = 3,
    forks: ForksOpt = 10, timeout: TimeoutOpt = 3600.0, as_json: JsonOpt = False,
) -> None:
    """Deploy BUNDLE to the inventory's hosts in batches, each through the same release protocol as
    `edgepack deploy` (staging, sha256 on the device, atomic switch, smoke run with switch-back, prune).

    Examples:

      edgepack fleet deploy dist/m-rpi -i inventory.ini --batch 1,10%,100% --max-fail 10% --smoke

      edgepack fleet deploy dist/m-rpi -i inventory.ini --limit 'lab:!pi-07' --json
    """
    from .. import fleet
    result = fleet.deploy(bundle, inventory, limit=limit, batch=batch, max_fail=max_fail, smoke=smoke,
                          install=install, keep=keep, forks=forks, timeout=timeout, progress=_progress(not as_json))
    if not as_json:
        _out.print(_deploy_table(result))
        _out.print(", ".join(f"{n} {k}" for k, n in sorted(result.counts.items())) + f" in {result.seconds:.1f} s",
                   highlight=False)
    _fail_if_needed(result, as_json, "are not on the new release")


@fleet_app.command("status")
@command
def status_cmd(bundle: OptBundle = None, inventory: InvOpt = Path("inventory.ini"), limit: LimitOpt = None,
               remote_dir: RemoteDirOpt = None, forks: ForksOpt = 10, timeout: TimeoutOpt = 900.0,
               as_json: JsonOpt = False) -> None:
    """Per host: current release, whether its files still match the manifest, runtime and Python
    versions on the device, and the last self-test result.

    Example: edgepack fleet status dist/m-rpi -i inventory.ini
    """
    from .. import fleet
    result = fleet.status(inventory, bundle_dir=bundle, remote_dir=remote_dir, limit=limit, forks=forks,
                          timeout=timeout)
    if not as_json:
        t = Table(title="fleet status", title_justify="left")
        for col in ("host", "current release", "files", "runtime", "python", "last self-test", "problems"):
            t.add_column(col, overflow="fold", no_wrap=col in _WHOLE)
        for h in result.hosts:
            d = h.details or {}
            info = d.get("info") or {}
            st = d.get("selftest")
            files = {True: "[green]intact[/]", False: "[red]DAMAGED[/]", None: "-"}[d.get("verified")] if d else "-"
            runtime = f"{info.get('runtime')} {info.get('runtime_version')}" if info.get("runtime") else (info.get("error") or "-")
            test = "-" if not st else (("passed" if st.get("passed") else "FAILED") + f" {st.get('at') or ''} ({st.get('release')})")
            cur = (h.release or "none") + (" (this bundle)" if h.on_bundle else "")
            t.add_row(h.host, cur if d else "-", files, escape(str(runtime)), str(info.get("python") or "-"), escape(test),
                      escape("; ".join(d.get("problems") or ()) or h.reason or ""))
        _out.print(t)
    _fail_if_needed(result, as_json, "did not answer")


@fleet_app.command("rollback")
@command
def rollback_cmd(bundle: OptBundle = None, inventory: InvOpt = Path("inventory.ini"), limit: LimitOpt = None,
                 remote_dir: RemoteDirOpt = None, forks: ForksOpt = 10, timeout: TimeoutOpt = 900.0,
                 as_json: JsonOpt = False) -> None:
    """Switch `current` back to the previous release on each host (checksummed on the host first).

    Example: edgepack fleet rollback dist/m-rpi -i inventory.ini --limit pi-07
    """
    from .. import fleet
    result = fleet.rollback(inventory, bundle_dir=bundle, remote_dir=remote_dir, limit=limit, forks=forks,
                            timeout=timeout)
    if not as_json:
        t = Table(title="fleet rollback", title_justify="left")
        for col in ("host", "outcome", "from", "to / current", "why"):
            t.add_column(col, overflow="fold", no_wrap=col in _WHOLE)
        for h in result.hosts:
            t.add_row(h.host, h.outcome, h.previous or "-", h.release or "-", escape(h.reason or ""))
        _out.print(t)
    _fail_if_needed(result, as_json, "were not rolled back")


@fleet_app.command("export")
@command
def export_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Directory to write the playbooks to.")],
    batch: Annotated[Optional[str], typer.Option("--batch", metavar="N,P%,...", help="serial of deploy.yml.")] = None,
    max_fail: Annotated[Optional[str], typer.Option("--max-fail", metavar="P%", help="max_fail_percentage.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke/--no-smoke", help="deploy.yml runs the self-test.")] = True,
    install: Annotated[bool, typer.Option("--install", help="deploy.yml builds DIR/venv.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write deploy.yml/status.yml/rollback.yml, ansible.cfg, the action plugin and a copy of the
    bundle, for running Ansible yourself (AWX, CI). The controller needs edgepack installed.

    Example: edgepack fleet export dist/m-rpi -o playbook/ && cd playbook && ansible-playbook -i inv.ini deploy.yml
    """
    from .. import fleet
    data = fleet.export(bundle, output, batch=batch, max_fail=max_fail, smoke=smoke, install=install)
    if as_json:
        from .render import emit_json
        emit_json(data)
    else:
        _out.print(f"wrote {data['output']}: {', '.join(data['playbooks'])}\nrun: {data['run']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``edgepack fleet`` command group (deploy, status, rollback, export) to ``app``."""
    app.add_typer(fleet_app, name="fleet")
