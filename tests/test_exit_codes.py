"""The device script's exit codes have one table (``EXIT_MEANINGS`` in device_runtime/edgepack_run.py): every
``EXIT_*`` constant has a meaning there, the host explains codes from it, and the documentation lists the same codes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from device_runtime import edgepack_run

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent
CODES = {name: value for name, value in vars(edgepack_run).items() if re.fullmatch(r"EXIT_[A-Z_]+", name)
         and isinstance(value, int)}


def test_every_exit_constant_has_a_meaning():
    assert CODES, "no EXIT_* constants found in device_runtime/edgepack_run.py"
    missing = sorted(n for n, v in CODES.items() if not edgepack_run.EXIT_MEANINGS.get(v))
    assert not missing, f"{missing} have no meaning in EXIT_MEANINGS (device_runtime/edgepack_run.py)"
    assert set(edgepack_run.EXIT_MEANINGS) == set(CODES.values()), "EXIT_MEANINGS has codes no EXIT_* constant names"


def test_the_host_reads_the_device_table():
    from packager.deploy.base import Completed
    from packager.deploy.releases import _script_failure
    from packager.verification.emulator import DEVICE_EXIT, _device_error
    assert DEVICE_EXIT == {c: m for c, m in edgepack_run.EXIT_MEANINGS.items() if c}
    for code, meaning in DEVICE_EXIT.items():
        assert _device_error("something else\n", code) == f"{meaning}: something else"
        assert f"with exit {code} ({meaning}): boom" in _script_failure(Completed(code, b"", b"boom"), "python3", "the run")


def _codes_in_table(text: str, header: str) -> set[int]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    codes = set()
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        codes.add(int(ln.strip("|").split("|")[0]))
    return codes


def test_readme_lists_the_same_device_codes():
    readme = (ROOT / "README.md").read_text()
    assert _codes_in_table(readme, "| device code |") == set(edgepack_run.EXIT_MEANINGS), \
        "README.md's device exit-code table differs from EXIT_MEANINGS in device_runtime/edgepack_run.py"


@pytest.mark.parametrize("doc", ["docs/bundle-format.md", "device_runtime/edgepack_run.py"])
def test_prose_lists_the_same_device_codes(doc):
    text = (ROOT / doc).read_text()
    line = re.search(r"Exit codes: (.*?)(?:\n\n|Errors are|Works on)", text, re.S)
    assert line, f"{doc} no longer says 'Exit codes: ...'"
    said = {int(c) for c in re.findall(r"(?:^|[,;:]\s*)(\d)\s", line[1])}
    assert said == set(edgepack_run.EXIT_MEANINGS), f"{doc} lists device exit codes {sorted(said)}"
