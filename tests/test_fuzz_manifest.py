"""Malformed manifests: the device script answers each with one error line and exit code 3
(or runs normally when the change does not matter), never a traceback, never a hang."""
from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "device_runtime" / "edgepack_run.py"

_DRIVER = r"""
import io, json, sys, traceback, contextlib
sys.path.insert(0, sys.argv[1])
import edgepack_run
results = {}
for case in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = edgepack_run.main(["--bundle", case, "--self-test", "--no-isolate"])
    except BaseException:
        code, tb = "exception", traceback.format_exc()
        err.write(tb)
    results[case] = [code, err.getvalue()]
print(json.dumps(results))
"""

VALUES = [None, "", "x", -1, 0, 1.5, 1e308, True, [], {}, [1, "a"], {"a": 1}, "x" * 5000, [[[[[]]]]],
          "../../etc/passwd", "/etc/passwd", "a\x00b", -(2 ** 70), 2 ** 70]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:2]):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value, delete=False):
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def mutations(manifest: dict, rng: random.Random):
    """(label, manifest.json bytes): structural mutations of every field the script may read,
    plus raw-text damage."""
    paths = [p for p in _paths(manifest) if p and p[0] in ("model", "model_sha256", "model_size", "inputs",
                                                          "outputs", "samples")]
    for path in paths:
        doc = copy.deepcopy(manifest)
        _set(doc, path, None, delete=True)
        yield "del " + "/".join(map(str, path)), json.dumps(doc).encode()
        for value in rng.sample(VALUES, 6):
            doc = copy.deepcopy(manifest)
            _set(doc, path, value)
            yield f"{'/'.join(map(str, path))}={str(value)[:20]!r}", json.dumps(doc).encode()
    raw = json.dumps(manifest).encode()
    for cut in sorted(rng.sample(range(1, len(raw)), 12)):
        yield f"truncated@{cut}", raw[:cut]
    yield "empty", b""
    yield "not utf-8", b"\xff\xfe" + raw
    yield "a list", b"[1, 2, 3]"
    yield "a string", b'"manifest"'
    yield "deep nesting", b"[" * 100_000 + b"]" * 100_000
    yield "NaN", raw.replace(b'"model_size": ', b'"model_size": NaN, "x": ')
    yield "random bytes", bytes(rng.getrandbits(8) for _ in range(300))


def test_fuzz_malformed_manifests(int8_bundle, runtime_python, tmp_path):
    src = Path(int8_bundle.bundle)
    manifest = json.loads((src / "manifest.json").read_text())
    rng = random.Random(17)
    cases, labels = [], {}
    for k, (label, data) in enumerate(mutations(manifest, rng)):
        case = tmp_path / f"c{k:04d}"
        case.mkdir()
        for item in src.iterdir():
            if item.name != "manifest.json":
                (case / item.name).symlink_to(item, target_is_directory=item.is_dir())
        (case / "manifest.json").write_bytes(data)
        cases.append(str(case))
        labels[str(case)] = label
    shutil.copy(SCRIPT, tmp_path / "edgepack_run.py")
    proc = subprocess.run([*runtime_python.argv, "-c", _DRIVER, str(tmp_path)], input=json.dumps(cases),
                          capture_output=True, text=True, env=runtime_python.env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    tracebacks = [labels[c] + ": " + err[-300:] for c, (code, err) in results.items()
                  if code == "exception" or "Traceback" in err]
    bad_codes = [f"{labels[c]}: exit {code}: {err[-200:]}" for c, (code, err) in results.items()
                 if code not in (0, 2, 3, 6) and code != "exception"]
    multi_line = [labels[c] for c, (code, err) in results.items()
                  if code not in (0, "exception") and [ln.startswith("edgepack_run: error:") for ln in
                                                       err.strip().splitlines()] != [True]]
    threes = sum(1 for code, _ in results.values() if code == 3)
    print(f"{len(cases)} malformed manifests: {threes} exit 3, {len(tracebacks)} tracebacks, "
          f"{len(bad_codes)} other codes")
    assert len(cases) >= 200
    assert not tracebacks, tracebacks[:5]
    assert not bad_codes, bad_codes[:5]
    assert not multi_line, multi_line[:5]
    assert threes >= 0.6 * len(cases)
    # a sample through the real entry point, as deployed: isolation child, exit code of the process
    for case in rng.sample(cases, 25):
        (Path(case) / "edgepack_run.py").unlink()   # a symlink into the shared bundle: replace, not write through
        shutil.copy(SCRIPT, Path(case) / "edgepack_run.py")
        real = subprocess.run([*runtime_python.argv, str(Path(case) / "edgepack_run.py"), "--self-test"],
                              capture_output=True, text=True, env=runtime_python.env, timeout=120)
        assert real.returncode == results[case][0], (labels[case], real.returncode, real.stderr[-300:])
        assert "Traceback" not in real.stderr, (labels[case], real.stderr[-600:])
