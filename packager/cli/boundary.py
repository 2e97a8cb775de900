"""The CLI's one error boundary: every command's EdgepackError becomes ``error: ...`` +
``hint: ...`` on stderr and its documented exit code (README "Exit codes"); with ``--json``
stdout also gets exactly one document, ``{"ok": false, "error", "hint", "exit_code", ...}``,
plus what the error carries (a verification report, a fleet's per-host summary)."""
from __future__ import annotations

import functools

import typer

from ..errors import EdgepackError, disk_full


def command(fn):
    """Wrap a typer command body (its ``--json`` parameter is ``json_output`` or ``as_json``)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:  # a full disk is the host's problem, not a bug
                problem = disk_full(exc)
                if problem is None:
                    raise
                raise problem from None
        except EdgepackError as exc:
            from . import render
            report = getattr(exc, "report", None)
            if kwargs.get("json_output") or kwargs.get("as_json"):
                data = {"ok": False, "error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
                if report is not None:
                    data["verification"] = report.to_json()
                from ..errors import Unverified, VerificationError
                if isinstance(exc, VerificationError):     # CI tells a mismatch from other errors by this
                    data["verdict"] = report.verdict if report is not None else \
                        "UNVERIFIED" if isinstance(exc, Unverified) else "MISMATCH"
                data.update(getattr(exc, "fleet", None) or {})
                render.emit_json(data)
            elif report is not None:
                render.show_verification(report.to_json())
                if getattr(report, "first_divergence", None):
                    render.out.print(report.first_divergence, markup=False, highlight=False)
                # the table and the FAIL lines above hold the numbers: one short line here
                render.error(exc.message.split(": ", 1)[0] + " (see above)", exc.hint)
                raise typer.Exit(exc.exit_code) from None
            render.error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
    return wrapper
