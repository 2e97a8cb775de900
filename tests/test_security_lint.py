"""Static security check: ruff's bandit rules (S) over everything that ships.

``ruff check --select S`` on the command line replaces the configured rule selection *and* drops
the configured ignores, so the S-rules the project deliberately ignores ([tool.ruff.lint] ignore
in pyproject.toml: S101 asserts, S603/S607 subprocess with argument lists) are passed on
explicitly; pyproject.toml stays the one place that decides them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["packager", "device_runtime"]


def _ruff() -> list:
    local = Path(sys.executable).parent / "ruff"
    for argv in ([str(local)] if local.exists() else [], [sys.executable, "-m", "ruff"],
                 [shutil.which("ruff")] if shutil.which("ruff") else []):
        if argv and subprocess.run([*argv, "--version"], capture_output=True, timeout=60).returncode == 0:
            return argv
    pytest.skip("ruff is not installed (pip install ruff)")


def _configured_ignores() -> list:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            tomllib = None
    if tomllib is not None:
        lint = tomllib.loads(text).get("tool", {}).get("ruff", {}).get("lint", {})
        return list(lint.get("ignore", []))
    section = text.split("[tool.ruff.lint]", 1)[1].split("\n[", 1)[0]
    match = re.search(r"^ignore\s*=\s*\[(.*?)\]", section, re.M | re.S)
    return re.findall(r'"([A-Z]+[0-9]*)"', match.group(1)) if match else []


def _check(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bandit_rules_pass_on_shipped_code():
    ignores = [code for code in _configured_ignores() if code.startswith("S")]
    assert {"S101", "S603", "S607"} <= set(ignores), ignores
    proc = _check([*_ruff(), "check", "--no-cache", "--select", "S", "--ignore", ",".join(ignores),
                   "--output-format", "concise", *SHIPPED])
    assert proc.returncode == 0, "ruff S findings (fix them, or justify a per-line noqa):\n" + proc.stdout + proc.stderr


def test_device_script_passes_the_full_configured_lint():
    """The one file that runs on devices: every configured rule (E, F, S, B), no exceptions."""
    proc = _check([*_ruff(), "check", "--no-cache", "--output-format", "concise", "device_runtime"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
