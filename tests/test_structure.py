"""The layout reads as the data flows: the import graph of ``packager`` (every import statement,
module level or inside a function) has no cycle, and no module imports a later stage."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "packager"

# Stage of each module, in the order data flows through them; a module may import its own stage
# or an earlier one. A new module must be placed here (the test says so).
STAGES = [
    ("foundation", ["packager.errors", "packager.version", "packager.paths", "packager.lifecycle", "packager.sandbox",
                    "packager.recipes",
                    "packager.targets", "packager.isolate", "packager.render"]),
    ("load", ["packager.op_allowlist", "packager.safety", "packager.loaders", "packager.calibration"]),
    ("convert", ["packager.inspect", "packager.compare", "packager.tensors_helper", "packager.localise",
                 "packager.convert", "packager.jobs"]),
    ("bundle", ["packager.manifest", "packager.bundle"]),
    ("verify", ["packager.arm64", "packager.emulator", "packager.cache", "packager.doctor"]),
    ("api", ["packager.diagnose", "packager.api", "packager.repair", "packager"]),
    ("deploy", ["packager.deploy", "packager.deploy.base", "packager.deploy.ssh", "packager.deploy.adb",
                "packager.deploy.releases"]),
    ("fleet", ["packager.fleet", "packager.fleet.core", "packager.fleet.transport",
               "packager.fleet.plugins.action.edgepack_release", "packager.fleet.plugins.callback.edgepack_events"]),
    ("cli", ["packager.config", "packager.boundary", "packager.render_diagnose", "packager.cli",
             "packager.cli_diagnose", "packager.cli_deploy", "packager.cli_fleet"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


def import_graph() -> dict[str, set]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                deps |= set(subs)
                if target in mods and len(subs) < len(node.names):
                    deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def test_every_module_has_a_stage():
    placed = {m for _, ms in STAGES for m in ms}
    assert set(modules()) - placed == set(), "place new modules in STAGES"
    assert placed - set(modules()) == set(), "STAGES names modules that no longer exist"


def test_no_import_cycle():
    graph = import_graph()
    state: dict = {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_upward_import():
    rank = {m: i for i, (_, ms) in enumerate(STAGES) for m in ms}
    names = {i: stage for i, (stage, _) in enumerate(STAGES)}
    upward = [f"{m} ({names[rank[m]]}) imports {d} ({names[rank[d]]})"
              for m, deps in import_graph().items() for d in deps if rank[d] > rank[m]]
    assert upward == []


def test_the_graph_reader_sees_every_import_form(tmp_path):
    """The reader itself can fail: relative, absolute and nested imports all count."""
    graph = import_graph()
    assert "packager.isolate" in graph["packager.convert"]          # `from .isolate import stage` in a function
    assert "packager.api" in graph["packager"]                       # `from . import api` in __getattr__
    assert "packager.deploy.base" in graph["packager.deploy.ssh"]


def test_public_api_from_a_plain_script(tmp_path):
    """The documented API, from a script with no __main__ guard (the contained child must not
    re-run it), with short reprs."""
    import os
    import subprocess
    import sys
    import textwrap
    import keras
    inp = keras.Input((3,), name="x")
    keras.Model(inp, keras.layers.Dense(2, name="y")(inp)).save(tmp_path / "m.keras")
    (tmp_path / "script.py").write_text(textwrap.dedent(f"""
        import packager
        from packager import build, verify, inspect, targets
        print("start")
        result = build({str(tmp_path / 'm.keras')!r}, recipe="float32", output={str(tmp_path / 'out')!r},
                       runtimes=["ai-edge-litert"])
        print(repr(result))
        print(inspect(result.bundle)["kind"], sorted(targets()))
    """))
    env = {k: v for k, v in os.environ.items() if k != "EDGEPACK_IN_PROCESS"}
    proc = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines.count("start") == 1                                   # the script ran once
    assert lines[1].startswith("BuildResult(") and "MATCH" in lines[1] and len(lines[1]) < 400
    assert lines[2] == "bundle ['android', 'rpi']"


def test_manifest_is_typed_and_validated(int8_bundle, tmp_path):
    """One reader of manifest.json: typed fields, the JSON as a read-only mapping, and a clear
    error naming the bad field (the device script's own checks for the fields it needs)."""
    import json
    import shutil
    import pytest
    from packager.bundle import read_manifest
    from packager.errors import UsageError
    from packager.manifest import Manifest, RuntimeStatus, VerificationStatus
    m = read_manifest(int8_bundle.bundle)
    assert isinstance(m, Manifest) and m.recipe == "int8" and m.target == "rpi"
    assert isinstance(int8_bundle.manifest, Manifest) and int8_bundle.manifest == m     # what build returns
    assert m.verification is VerificationStatus.PASSED
    assert m.inputs[0].name == m["inputs"][0]["name"] and not m.inputs[0].quantized      # int8 with --io float
    assert dict(m.runtimes)["ai-edge-litert"] is RuntimeStatus.PASSED
    assert m.to_json() == json.loads((int8_bundle.bundle / "manifest.json").read_text())
    with pytest.raises(TypeError):
        m["name"] = "x"                                        # read-only
    bad = tmp_path / "b"
    shutil.copytree(int8_bundle.bundle, bad)
    for mutate, words in ((lambda d: d["outputs"][0].pop("dtype"), "outputs"),
                          (lambda d: d.update(format=99), "format 99"),
                          (lambda d: d["runtimes"][0].update(status="great"), "status 'great'"),
                          (lambda d: d.update(model="../x.tflite"), "model")):
        data = json.loads((int8_bundle.bundle / "manifest.json").read_text())
        mutate(data)
        (bad / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(UsageError) as info:
            read_manifest(bad)
        assert words in info.value.message and "\n" not in info.value.message
