"""`edgepack fleet deploy|verify|status|rollback|export`: many devices through Ansible (docs/fleet.md).

Renders what ``packager.fleet`` returns: a table per host, or exactly one JSON document on stdout
with --json (also on failure). Exit codes as everywhere: 2 bad input, 5 ansible-core missing,
6 some host is not where it should be (the table/JSON says which and why)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
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

from .render import out as _out, err as _err   # one console: 120 columns and one message per line when piped
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


def _step(enabled: bool):
    """Host-side progress (computing the reference outputs) to stderr, or None."""
    from .render import state
    if not enabled or state["quiet"]:
        return None
    return lambda msg: _err.print(f"[dim]{'reference':>11}[/dim] {escape(str(msg))}", highlight=False)


def _fail_if_needed(result, as_json: bool, what: str) -> None:
    from ..fleet.core import GOOD
    from .render import emit_json
    bad = [h for h in result.hosts if h.outcome not in GOOD[result.op]]
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
    gated = any(h.verdict for h in result.hosts)
    for col in ("host", "outcome", "current release", "sent", "smoke") + (("verdict",) if gated else ()) + ("why",):
        t.add_column(col, overflow="fold", no_wrap=col in _WHOLE)
    colors = {"deployed": "green", "current": "green", "rolled back": "yellow", "failed": "red",
              "unreachable": "red", "not reached": "dim"}
    for h in result.hosts:
        smoke = {True: "passed", False: "FAILED", None: "-"}[h.smoke]
        t.add_row(h.host, f"[{colors.get(h.outcome, 'white')}]{h.outcome}[/]", h.release or "-",
                  f"{h.uploaded} files, {h.bytes_sent} B" if h.outcome in ("deployed", "current") else "-",
                  smoke, *((escape(h.verdict or "-"),) if gated else ()), escape(h.reason or ""))
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
    verify_data: Annotated[Optional[Path], typer.Option(
        "--verify-data", metavar="FILE", help="Gate the rollout on the verdict: after its switch each host runs these "
        "held-out inputs (.npz, x and optional y) and is judged against --reference; a host that does not MATCH is "
        "switched back and counts against --max-fail.")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", metavar="MODEL",
                                                      help="The original model, for --verify-data.")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a model that runs Python code (Lambda "
                                                                     "layers) to compute the reference.")] = False,
    forks: ForksOpt = 10, timeout: TimeoutOpt = 3600.0, as_json: JsonOpt = False,
) -> None:
    """Deploy BUNDLE to the inventory's hosts in batches, each through the same release protocol as
    `edgepack deploy` (staging, sha256 on the device, atomic switch, smoke run with switch-back, prune).

    Examples:

      edgepack fleet deploy dist/m-rpi -i inventory.ini --batch 1,10%,100% --max-fail 10% --smoke

      edgepack fleet deploy dist/m-rpi -i inventory.ini --limit 'lab:!pi-07' --json

      edgepack fleet deploy dist/m-rpi -i inventory.ini --batch 1,25% --max-fail 0% --verify-data eval.npz -r model.h5
    """
    from .. import fleet
    result = fleet.deploy(bundle, inventory, limit=limit, batch=batch, max_fail=max_fail, smoke=smoke,
                          install=install, keep=keep, forks=forks, timeout=timeout, progress=_progress(not as_json),
                          verify_data=verify_data, reference=reference, trust_model=trust_model,
                          step=_step(not as_json))
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
    _fail_if_needed(result, as_json, "did not answer or hold a damaged current release")


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


@fleet_app.command("verify")
@command
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory deployed on the hosts.", show_default=False)],
    inventory: InvOpt,
    reference: Annotated[Path, typer.Option("--reference", "-r", metavar="MODEL", help="The original model file.")],
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help="Held-out inputs (.npz, x or named "
                    "inputs, optional y labels) [default: the bundle's samples].")] = None,
    limit: LimitOpt = None,
    batch: Annotated[Optional[str], typer.Option("--batch", metavar="N,P%,...", help="Hosts verified at a time "
                                                 "(Ansible serial) [default: all at once, --forks in parallel].")] = None,
    release: Annotated[Optional[str], typer.Option("--release", metavar="ID", help="Run this release on every host "
                                                   "[default: the one current on each].")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a model that runs Python code (Lambda "
                                                                     "layers) to compute the reference.")] = False,
    forks: ForksOpt = 10, timeout: TimeoutOpt = 3600.0, as_json: JsonOpt = False,
) -> None:
    """The verdict on every device: the reference outputs are computed once here, each host runs the inputs with its
    deployed release in its own environment, and each host's outputs are judged by the same criteria as
    `edgepack verify`. A host whose outputs differ from the other hosts' is named with the first output that differs
    and by how much.

    Exit 0 when every host MATCHes; 6 when a host does not (its verdict and why are in the table / JSON).

    Example: edgepack fleet verify dist/m-rpi -i inventory.ini --reference model.h5 --data eval.npz
    """
    from .. import fleet
    result = fleet.verify(bundle, inventory, reference=reference, data=data, limit=limit, batch=batch,
                          release=release, forks=forks, timeout=timeout, trust_model=trust_model,
                          progress=_progress(not as_json), step=_step(not as_json))
    if not as_json:
        t = Table(title=f"fleet verify {bundle.name} (model {str(result.model_sha256)[:12]})", title_justify="left")
        for col in ("host", "verdict", "release", "runtime", "cpu", "differs from the others", "why"):
            t.add_column(col, overflow="fold", no_wrap=col in ("verdict", "release"))
        colors = {"MATCH": "green", "MISMATCH": "red"}
        for h in result.hosts:
            info = (h.details or {}).get("info") or {}
            odd = h.odd or {}
            diff = "-" if not odd else (f"{odd['output']}: max |diff| {odd['max_abs_diff']:.3g} on "
                                        f"{odd['differing']:.1%} of values" if odd.get("max_abs_diff") is not None
                                        else f"{odd['output']}: another shape")
            verdict = h.verdict or h.outcome
            t.add_row(h.host, f"[{colors.get(verdict, 'yellow')}]{escape(verdict)}[/]", h.release or "-",
                      escape(f"{info.get('runtime') or '-'} {info.get('runtime_version') or ''}"),
                      escape(str(info.get("machine") or "-")), escape(diff),
                      escape(h.reason or "" if verdict != "MATCH" else ""))
        _out.print(t)
        odd = [h for h in result.hosts if h.odd]
        for h in odd:
            o = h.odd
            _out.print(f"[yellow]odd one out:[/yellow] {escape(h.host)} computes {escape(o['output'])} differently from "
                       f"{escape(', '.join(o['norm']))}" + (f" (max |diff| {o['max_abs_diff']:.3g}, {o['differing']:.1%} of "
                                                            "values)" if o.get("max_abs_diff") is not None else ""),
                       highlight=False)
        _out.print(", ".join(f"{n} {k}" for k, n in sorted(result.counts.items())) + f" in {result.seconds:.1f} s",
                   highlight=False)
    _fail_if_needed(result, as_json, "do not MATCH")


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
    """Add the ``edgepack fleet`` command group (deploy, verify, status, rollback, export) to ``app``."""
    app.add_typer(fleet_app, name="fleet")
