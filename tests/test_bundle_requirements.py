"""Issue 21 part 4: a bundle cannot choose what the device installs. Requirement lines that edgepack did not
write (a URL, a path, an index option, another package) are refused by inspect, verify and deploy, with the
line named; the device install takes wheels only."""
from __future__ import annotations

import json
import shutil

import pytest

from packager import api
from packager.bundle.files import requirement_problems
from packager.errors import EdgepackError

HOSTILE = ["./evil-pkg", "-i https://evil.example/simple", "--extra-index-url https://evil.example",
           "numpy @ https://evil.example/numpy.whl", "evilpkg==1.0", "-e git+https://evil.example/x.git",
           "/tmp/evil.tar.gz", "-r other.txt"]


@pytest.fixture
def bundle_copy(int8_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(int8_bundle.bundle, dst)
    return dst


def _rehash(bundle, name):
    """Keep the manifest's checksum true, as a hostile bundle author would."""
    from packager.bundle.files import sha256_file
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"][name] = "sha256:" + sha256_file(bundle / name)
    mpath.write_text(json.dumps(manifest))


def test_edgepacks_own_requirements_pass(int8_bundle):
    assert requirement_problems(int8_bundle.bundle) == []
    assert (int8_bundle.bundle / "requirements.txt").read_text().strip()


@pytest.mark.parametrize("line", HOSTILE)
def test_a_foreign_requirement_line_is_refused_everywhere(bundle_copy, zoo, line):
    req = bundle_copy / "requirements.txt"
    req.write_text(req.read_text() + line + "\n")
    _rehash(bundle_copy, "requirements.txt")
    problems = requirement_problems(bundle_copy)
    assert len(problems) == 1 and line.split()[0][:20] in problems[0]
    info = api.inspect(bundle_copy)
    assert info["integrity"] != "ok" and "requirements.txt line" in str(info["integrity"])
    with pytest.raises(EdgepackError) as exc:
        api.verify(bundle_copy, reference=zoo["keras3_h5"], runtimes=["ai-edge-litert"])
    assert "requirements.txt line" in exc.value.message
    from packager.deploy.releases import load_bundle
    with pytest.raises(EdgepackError) as exc:
        load_bundle(bundle_copy)
    assert "requirements.txt line" in exc.value.message and "nothing was sent" in exc.value.hint


def test_the_device_install_takes_wheels_only():
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "packager" / "deploy" / "releases.py").read_text()
    assert "--only-binary :all:" in text


def test_a_local_path_would_run_its_setup_py_so_it_never_reaches_pip(tmp_path, bundle_copy):
    """The control: a requirement naming a local directory runs that directory's setup.py (as the device's user)
    under `pip install -r`, even with --only-binary :all:. So edgepack refuses the line before anything is sent,
    and the device install passes pip only the checked lines, never the bundle's file."""
    import subprocess
    import sys
    from packager.deploy.releases import load_bundle
    marker = tmp_path / "setup-py-ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "setup.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                   "from setuptools import setup\nsetup(name='evil', version='1')\n")
    req = bundle_copy / "requirements.txt"
    req.write_text(req.read_text() + f"{evil}\n")
    _rehash(bundle_copy, "requirements.txt")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # (the control reads the line alone: next to the bundle's hashed lines pip's hash-checking mode would refuse a
    # directory before building it, but a bundle need not carry hashes to reach pip: edgepack refuses it first)
    control = tmp_path / "control.txt"
    control.write_text(f"{evil}\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "--no-index", "--no-build-isolation", "--no-deps", "--only-binary", ":all:", "-r",
                    str(control)], capture_output=True, timeout=300)
    assert marker.exists(), "control: pip runs the bundle's setup.py, --only-binary or not"
    with pytest.raises(EdgepackError) as exc:
        load_bundle(bundle_copy)
    assert str(evil) in exc.value.message and "a pip option, URL or path" in exc.value.message
    from pathlib import Path
    src = (Path(__file__).resolve().parent.parent / "packager" / "deploy" / "releases.py").read_text()
    assert "requirements.txt')}" not in src and "-r {q(" not in src       # pip gets the checked lines, not -r
