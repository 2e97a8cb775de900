"""CLI commands for devices: deploy, run, rollback, status. ``register(app)`` adds them to the main
typer app. They only call ``packager.deploy`` and render its results (rich tables, or JSON with
--json); EdgepackError propagates to the main entry point, which prints it and sets the exit code."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import deploy as dep
from ..errors import UsageError

SshConfigOpt = Annotated[Optional[Path], typer.Option(
    "--ssh-config", metavar="FILE", help="ssh client config file (passed as ssh -F FILE).")]
RemoteDirOpt = Annotated[Optional[str], typer.Option(
    "--remote-dir", metavar="DIR",
    help="Directory on the device [default: the target's, ~/edgepack/NAME (rpi) or "
         "/data/local/tmp/edgepack/NAME (android)].")]
PythonOpt = Annotated[Optional[str], typer.Option(
    "--device-python", metavar="PATH",
    help="Python on the device for --smoke/run/verify [default: DIR/venv/bin/python if --install made it, else the "
         "one the last deploy was given (remembered in DIR/python.last), else the target's (python3)].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", metavar="SECONDS", min=1.0, help="Timeout of each device command (transfers get more).")]
BundleOpt = Annotated[Optional[Path], typer.Argument(
    metavar="[BUNDLE]", help="A bundle directory: its name and target give the remote dir and transport.",
    show_default=False)]

from .render import out as _out, err as _err   # one console: 120 columns and one message per line when piped


def _json(value, **extra) -> None:
    """One JSON document on stdout: ``{"ok": true, ...}`` (the boundary writes ``{"ok": false, ...}`` on errors),
    then the fields of the result dataclass ``value``, then ``extra`` (which may set ``ok``)."""
    def default(o):
        if isinstance(o, Path):
            return str(o)
        raise TypeError(type(o).__name__)
    typer.echo(json.dumps({"ok": True, **dataclasses.asdict(value), **extra}, indent=2, default=default))


def _manifest(bundle: Path | None):
    """The bundle's validated Manifest (None without a bundle). Raises UsageError."""
    if bundle is None:
        return None
    from ..bundle.files import read_manifest
    return read_manifest(bundle)


def _transport_classes() -> list[type[dep.Transport]]:
    """The registered transports the CLI can address (those with a ``cli_option``), in registry order."""
    return [cls for cls in dep.TRANSPORTS.values() if cls.cli_option]


def _param_name(cls: type[dep.Transport]) -> str:
    return "device_" + cls.method


def _help(cls, helps) -> str:
    """A transport's option help: in ``verify`` (``helps="verify"``) its ``cli_verify_help`` (or a generic sentence),
    else ``helps[method]`` when given, else its ``cli_help``."""
    if helps == "verify":
        return cls.cli_verify_help or (f"Compute the verdict on the device {cls.cli_option} {cls.cli_metavar} names "
                                       f"({cls.label or cls.method}): the deployed release runs the inputs there and "
                                       "the outputs are judged here.")
    return (helps or {}).get(cls.method, cls.cli_help)


def device_options(fn=None, *, panel: str | None = None, helps: dict[str, str] | str | None = None):
    """Decorator: replace ``fn``'s ``devices`` parameter by one option per registered transport (its ``cli_option``,
    ``cli_short``, ``cli_metavar``, ``cli_help``; ``helps`` overrides the help by method, ``panel`` is the rich help
    panel). ``fn`` receives ``devices={method: value or None}``."""
    def wrap(fn):
        sig = inspect.signature(fn, eval_str=True)
        classes = _transport_classes()
        params = []
        for p in sig.parameters.values():
            if p.name != "devices":
                params.append(p)
                continue
            for cls in classes:
                decls = [cls.cli_option] + ([cls.cli_short] if cls.cli_short else [])
                option = typer.Option(*decls, metavar=cls.cli_metavar, help=_help(cls, helps),
                                      rich_help_panel=panel)
                params.append(inspect.Parameter(_param_name(cls), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                                annotation=Annotated[Optional[str], option]))

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            devices = {cls.method: kwargs.pop(_param_name(cls), None) for cls in classes}
            return fn(*args, devices=devices, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return wrap(fn) if fn is not None else wrap


def _addresses() -> str:
    return " or ".join(f"{cls.cli_option} {cls.cli_metavar} ({cls.label})" for cls in _transport_classes())


def _transport(devices: dict[str, str | None], ssh_config: Path | None, timeout: float, manifest) -> dep.Transport:
    """The transport the device options name (``devices``: method -> option value), else the one the bundle's
    target deploys over. UsageError (one line, a hint) for several, none, or a shared option the transport ignores."""
    given = [m for m, value in devices.items() if value is not None]
    if len(given) > 1:
        raise UsageError("give " + " or ".join(f"{dep.TRANSPORTS[m].cli_option} ({dep.TRANSPORTS[m].label})"
                                              for m in given) + ", not several")
    method = given[0] if given else (dep.deploy_method(manifest) if manifest else None)
    if method is None:
        raise UsageError(f"which device? pass {_addresses()}", hint="or name a bundle whose target says how it is deployed")
    cls = dep.TRANSPORTS.get(method)
    if cls is None or not cls.cli_option:
        options = ", ".join(c.cli_option for c in _transport_classes())
        raise UsageError(f"this bundle's target deploys over {method!r}; the edgepack CLI reaches devices with {options}",
                         hint=f"pass one of {options}, or deploy from Python: packager.deploy.deploy(BUNDLE, "
                              f"make_transport({method!r}, ...))")
    common = {"ssh_config": ssh_config}
    for name, value in common.items():
        if value is not None and name not in cls.cli_common:
            users = [c for c in _transport_classes() if name in c.cli_common]
            raise UsageError(f"--{name.replace('_', '-')} only applies to "
                             + " or ".join(f"{c.label} ({c.cli_option})" for c in users))
    return cls.from_cli(devices.get(method), timeout=timeout, **{k: v for k, v in common.items() if k in cls.cli_common})


def _remote_dir(remote_dir: str | None, manifest, transport: dep.Transport) -> str | None:
    """``--remote-dir``, else the directory the address names (``--local DIR``), else the bundle's default."""
    if remote_dir and transport.directory:
        raise UsageError(f"{transport.cli_option} DIR is the directory; --remote-dir is for devices elsewhere",
                         hint="give the directory once")
    if remote_dir:
        return remote_dir
    if transport.directory:
        return transport.directory
    if manifest is None:
        raise UsageError("pass --remote-dir DIR or a BUNDLE (whose name gives the default directory)")
    return dep.default_remote_dir(manifest, transport)


def _progress(enabled: bool):
    from .render import state
    if not enabled or state["quiet"]:      # `edgepack --quiet deploy ...`
        return None
    return lambda step, detail: _err.print(f"[dim]{step:>8}[/dim] {detail}", highlight=False)


def _kv_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, "-" if value in (None, "", ()) else str(value))
    return table


def deploy_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory built by `edgepack build`, or its .tar.gz "
                                                "(unpacked by the safe archive reader first).", show_default=False)],
    devices=None, ssh_config: SshConfigOpt = None,
    remote_dir: RemoteDirOpt = None,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Releases to keep on the device (current and the "
                                                                 "previous one are never deleted).")] = 3,
    install: Annotated[bool, typer.Option("--install", help="SSH: create DIR/venv on the device and pip install "
                                                             "the bundle's requirements.txt into it.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="After switching, run the bundled samples on the device and "
                                                         "judge them by the verdict's criteria against the outputs recorded at "
                                                         "build; on failure switch back to the previous release.")] = False,
    device_python: PythonOpt = None, timeout: TimeoutOpt = 60.0, as_json: JsonOpt = False,
) -> None:
    """Upload BUNDLE as a new release, verify every file's sha256 on the device, switch `current`.

    Unchanged files are reused from releases already on the device, so redeploying sends ~nothing.

    Examples:

      edgepack deploy dist/mnist-rpi --host pi@raspberrypi.local --smoke

      edgepack deploy dist/mnist-rpi --host pi@10.0.0.7:2222 --install --smoke --keep 5

      edgepack deploy dist/mnist-android --serial R58M123 --smoke --device-python /data/local/tmp/py/bin/python3

      edgepack deploy dist/mnist-rpi --local /media/$USER/rootfs/home/pi/edgepack/mnist-rpi
    """
    from ..bundle.files import open_bundle
    with open_bundle(bundle) as bundle:
        manifest = _manifest(bundle)
        transport = _transport(devices, ssh_config, timeout, manifest)
        with transport:
            result = dep.deploy(bundle, transport, remote_dir=_remote_dir(remote_dir, manifest, transport), keep=keep, install=install, smoke=smoke,
                                progress=_progress(not as_json), device_python=device_python)
    if as_json:
        return _json(result)
    what = "deployed" if result.changed else "already deployed (identical content; nothing switched)"
    rows = [("device", result.device), ("remote dir", result.remote_dir), ("current", result.release),
            ("previous", result.previous), ("uploaded", f"{len(result.uploaded)} files, {result.bytes_sent} bytes"),
            ("reused on device", f"{len(result.reused)} files"), ("pruned", ", ".join(result.pruned)),
            ("device python", result.device_python + (" (venv installed)" if result.installed else ""))]
    if result.smoke is not None:
        rows.append(("smoke test", result.smoke.report.get("line")))
    rows.append(("time", f"{result.seconds:.1f} s"))
    _out.print(_kv_table(f"{bundle.name}: {what}", rows))


def run_cmd(
    bundle: BundleOpt = None, devices=None, ssh_config: SshConfigOpt = None,
    remote_dir: RemoteDirOpt = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", metavar="FILE",
                                                  help="Inputs (.npz keyed by input name, .npy or .json), "
                                                       "pushed to the device.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                   help="Where to write the outputs pulled back [default: "
                                                        "INPUT-out.npz].")] = None,
    benchmark: Annotated[Optional[int], typer.Option("--benchmark", metavar="N", min=1,
                                                     help="Time N invocations on the device instead.")] = None,
    benchmark_binary: Annotated[Optional[Path], typer.Option(
        "--benchmark-binary", metavar="PATH",
        help="LiteRT benchmark_model built for the device: pushed to DIR/bin and run with --graph.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Interpreter threads.")] = None,
    device_python: PythonOpt = None, timeout: TimeoutOpt = 60.0, as_json: JsonOpt = False,
) -> None:
    """Run the deployed model on the device: inference on an input file, or a benchmark.

    Examples:

      edgepack run --host pi@raspberrypi.local --remote-dir '~/edgepack/mnist-rpi' --input x.npz --output y.npz

      edgepack run dist/mnist-rpi --host pi@raspberrypi.local --benchmark 200 --json

      edgepack run dist/mnist-android --serial R58M123 --benchmark 100 --benchmark-binary ./benchmark_model
    """
    manifest = _manifest(bundle)
    transport = _transport(devices, ssh_config, timeout, manifest)
    with transport:
        rdir = _remote_dir(remote_dir, manifest, transport)
        result = dep.run(transport, rdir, input=input, output=output, benchmark=benchmark,
                         benchmark_binary=benchmark_binary, device_python=device_python, threads=threads,
                         timeout=timeout)
    if as_json:
        return _json(result)
    rows = [("device", result.device), ("release", result.release), ("device python", result.device_python)]
    if result.output is not None:
        rows.append(("outputs", result.output))
    if result.benchmark is not None:
        b = result.benchmark
        for key in ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "init_ms", "first_ms", "peak_rss_mb", "peak_mem_mb",
                    "runtime", "runtime_version", "machine"):
            if b.get(key) is not None:
                rows.append((key, f"{b[key]:.3f}" if isinstance(b[key], float) else b[key]))
    rows.append(("time", f"{result.seconds:.1f} s"))
    _out.print(_kv_table("run on device", rows))


def rollback_cmd(
    bundle: BundleOpt = None, devices=None, ssh_config: SshConfigOpt = None,
    remote_dir: RemoteDirOpt = None,
    to: Annotated[Optional[str], typer.Option("--to", metavar="RELEASE",
                                              help="Release id to switch to [default: the one before current].")] = None,
    timeout: TimeoutOpt = 60.0, as_json: JsonOpt = False,
) -> None:
    """Switch `current` back to the previous release (checksummed on the device first).

    Examples:

      edgepack rollback dist/mnist-rpi --host pi@raspberrypi.local

      edgepack rollback --serial R58M123 --remote-dir /data/local/tmp/edgepack/mnist --to 20250101T120000Z-0123456789ab
    """
    manifest = _manifest(bundle)
    transport = _transport(devices, ssh_config, timeout, manifest)
    with transport:
        result = dep.rollback(transport, _remote_dir(remote_dir, manifest, transport), to=to)
    if as_json:
        return _json(result)
    _out.print(f"{result.device}: current {result.from_release} -> [bold]{result.to_release}[/bold] in {result.remote_dir}",
               highlight=False)


def status_cmd(
    bundle: BundleOpt = None, devices=None, ssh_config: SshConfigOpt = None,
    remote_dir: RemoteDirOpt = None, timeout: TimeoutOpt = 60.0, as_json: JsonOpt = False,
) -> None:
    """Show the releases on the device, which one is current, and whether its files are intact (exit 6 when
    the current release is damaged).

    Examples:

      edgepack status dist/mnist-rpi --host pi@raspberrypi.local

      edgepack status --serial R58M123 --remote-dir /data/local/tmp/edgepack/mnist --json

      edgepack status --local /media/$USER/rootfs/home/pi/edgepack/mnist-rpi
    """
    manifest = _manifest(bundle)
    transport = _transport(devices, ssh_config, timeout, manifest)
    with transport:
        result = dep.status(transport, _remote_dir(remote_dir, manifest, transport))
    damaged = result.verified is False
    hint = ("redeploy the bundle (`edgepack deploy BUNDLE` with the same device options: intact files are not sent "
            "again) or switch back with `edgepack rollback`")
    if as_json:
        _json(result, **({"ok": False, "error": f"current release {result.current} is damaged on {result.device}",
                          "hint": hint, "exit_code": 6} if damaged else {}))
        if damaged:
            raise typer.Exit(6)
        return
    if not result.releases:
        _out.print(f"{result.device}: nothing deployed in {result.remote_dir}", highlight=False)
        return
    where = result.device if result.device.endswith(result.remote_dir) else f"{result.device}:{result.remote_dir}"
    table = Table(title=where, title_justify="left")
    for col in ("", "release", "created (UTC)", "model sha256"):
        # a release id is what --release/--to take: never cut ("…"), folded when the terminal is narrow
        table.add_column(col, overflow="fold", no_wrap=col in ("release", "created (UTC)"))
    for rel in reversed(result.releases):
        mark = "current" if rel.current else ("previous" if rel.id == result.previous else "")
        table.add_row(mark, rel.id, rel.created, rel.model_sha256_prefix)
    _out.print(table)
    state = {True: "[green]intact[/green]", False: "[red]DAMAGED[/red]", None: "-"}[result.verified]
    _out.print(f"current: {result.current or 'none'} ({result.name or '?'}), files {state}"
               + (f", venv at {result.remote_dir}/venv" if result.venv else "")
               + (f", device python {result.python} (from the last deploy)" if result.python and not result.venv else ""))
    for problem in result.problems:
        _out.print(f"[red]problem:[/red] {problem}", highlight=False)
    if damaged:    # exit 6 (README "Exit codes"): a script or CI checking the device sees it without parsing
        from . import render
        render.error(f"current release {result.current} is damaged on {result.device}", hint)
        raise typer.Exit(6)


def register(app: typer.Typer) -> None:
    """Add deploy, run, rollback and status to ``app``, behind the CLI's one error boundary
    (``cli.command``: exit codes, and one JSON document on failure with --json)."""
    from .boundary import command
    app.command("deploy")(command(device_options(deploy_cmd)))
    app.command("run")(command(device_options(run_cmd)))
    app.command("rollback")(command(device_options(rollback_cmd)))
    app.command("status")(command(device_options(status_cmd)))
