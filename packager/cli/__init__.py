"""The command line: the only part of edgepack that prints, imports rich, or maps errors to exit codes.

- :mod:`.commands` -- the ``edgepack`` typer app (build, verify, inspect, targets, recipes, doctor)
- :mod:`.deploy`, :mod:`.fleet`, :mod:`.diagnose` -- the commands registered on it
- :mod:`.boundary` -- the one error boundary: EdgepackError -> ``error:``/``hint:`` lines, the documented
  exit code, and one JSON document with ``--json``
- :mod:`.render`, :mod:`.render_diagnose` -- tables and the HTML report (render what the library returns)
- :mod:`.config` -- option defaults from ``edgepack.toml`` / ``[tool.edgepack]``

``python -m packager.cli`` and ``python -m packager`` run the same entry point as ``edgepack``.
"""


def main(argv: "list[str] | None" = None) -> None:
    """Console entry point ``edgepack``; see :func:`packager.cli.commands.main`."""
    from .commands import main as run
    run(argv)
