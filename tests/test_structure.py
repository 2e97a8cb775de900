"""The layout reads as the data flows: the import graph of ``packager`` (every import statement,
module level or inside a function) has no cycle, and no module imports a later stage."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "packager"

# The stages in the order data flows through them: a module belongs to the stage whose package (or
# top-level module) names it, and may import its own stage or an earlier one. The layout is this map:
# a new module in a stage package needs no entry; a new top-level module must be placed here.
STAGES = [
    ("foundation", ["packager.errors", "packager.version", "packager.paths", "packager.tensor", "packager.jsonsafe",
                    "packager.recipes", "packager.statcache", "packager.lazynp",
                    "packager.targets", "packager.runtime_lock",
                    "packager.criteria", "packager.compare", "packager.contain"]),
    ("load", ["packager.load"]),
    ("convert", ["packager.convert"]),
    ("bundle", ["packager.bundle"]),
    ("verify", ["packager.verification"]),
    ("deploy", ["packager.deploy"]),
    ("api", ["packager.api", "packager.diagnose", "packager.repair", "packager"]),
    ("fleet", ["packager.fleet"]),
    ("cli", ["packager.cli", "packager.__main__"]),
]


def stage_of(module: str) -> int | None:
    """Index in STAGES of the longest entry that is ``module`` or a package holding it."""
    best = None
    for i, (_, names) in enumerate(STAGES):
        for name in names:
            if (module == name or (name != "packager" and module.startswith(name + "."))) and \
                    (best is None or len(name) > best[1]):
                best = (i, len(name))
    return None if best is None else best[0]


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
    assert [m for m in modules() if stage_of(m) is None] == [], "place new top-level modules in STAGES"
    placed = {m for _, ms in STAGES for m in ms}
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
    names = {i: stage for i, (stage, _) in enumerate(STAGES)}
    upward = [f"{m} ({names[stage_of(m)]}) imports {d} ({names[stage_of(d)]})"
              for m, deps in import_graph().items() for d in deps if stage_of(d) > stage_of(m)]
    assert upward == []


def test_the_graph_reader_sees_every_import_form(tmp_path):
    """The reader itself can fail: relative, absolute and nested imports all count."""
    graph = import_graph()
    assert "packager.contain.isolate" in graph["packager.convert.converter"]  # `from ..contain.isolate import stage` in a function
    assert "packager.api" in graph["packager"]                       # `from . import api` in __getattr__
    assert "packager.deploy.base" in graph["packager.deploy.ssh"]
    assert "packager.verification.cache" in graph["packager.api"]          # `from .verification import cache`
    assert stage_of("packager.load.model") < stage_of("packager.convert.jobs") < stage_of("packager.cli.commands")
    assert stage_of("packager") == stage_of("packager.api") and stage_of("packager.packaging") is None


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
        print(inspect(result)["kind"], sorted(targets()))          # a BuildResult is its bundle (os.PathLike)
        report = verify(result, reference={str(tmp_path / 'm.keras')!r}, runtimes=["ai-edge-litert"])
        print(report.passed, "float32" in packager.recipes(), callable(packager.build))
    """))
    env = {k: v for k, v in os.environ.items() if k != "EDGEPACK_IN_PROCESS"}
    proc = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines.count("start") == 1                                   # the script ran once
    assert lines[1].startswith("BuildResult(") and "MATCH" in lines[1] and len(lines[1]) < 400
    assert lines[2] == "bundle ['android', 'rpi']"
    assert lines[3] == "True True True"                                # every documented name is the function


def test_manifest_is_typed_and_validated(int8_bundle, tmp_path):
    """One reader of manifest.json: typed fields (no raw mapping of the JSON), and a clear
    error naming the bad field (the device script's own checks for the fields it needs)."""
    import json
    import shutil
    import pytest
    from packager.bundle.files import read_manifest
    from packager.errors import UsageError
    from packager.bundle.manifest import Manifest, RuntimeStatus, VerificationStatus
    m = read_manifest(int8_bundle.bundle)
    assert isinstance(m, Manifest) and m.recipe == "int8" and m.target == "rpi"
    assert isinstance(int8_bundle.manifest, Manifest) and int8_bundle.manifest == m     # what build returns
    assert m.verification is VerificationStatus.PASSED
    assert m.inputs[0].name == m.to_json()["inputs"][0]["name"] and not m.inputs[0].quantized  # int8 with --io float
    assert {r.name: r.status for r in m.runtimes}["ai-edge-litert"] is RuntimeStatus.PASSED
    readme = (int8_bundle.bundle / "README.md").read_text()
    assert "ai-edge-litert (passed)" in readme and "RuntimeStatus" not in readme
    assert "'numpy>=1.23,<3'" in readme                         # pasteable: > and < quoted for the shell
    assert m.to_json() == json.loads((int8_bundle.bundle / "manifest.json").read_text())

    def strict(constant):                       # JSON has no NaN/Infinity: jq, JSON.parse refuse them
        raise ValueError(constant)
    json.loads((int8_bundle.bundle / "manifest.json").read_text(), parse_constant=strict)
    from packager.bundle.files import check_files, manifest_bytes
    assert json.loads(manifest_bytes({"snr": float("inf"), "x": [float("nan")]}), parse_constant=strict) == \
        {"snr": "inf", "x": ["nan"]}
    linked = tmp_path / "linked"
    shutil.copytree(int8_bundle.bundle, linked)
    (linked / "model.tflite").unlink()
    (linked / "model.tflite").symlink_to(int8_bundle.bundle / "model.tflite")    # same bytes, but a link
    assert any("symbolic link" in p for p in check_files(linked, m))
    with pytest.raises(TypeError):
        m["name"]                                              # typed: no raw lookups
    with pytest.raises(AttributeError):
        m.name = "x"                                           # frozen
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


def test_every_registered_runtime_is_importable_by_the_device_script():
    """A runtime is added in packager/runtimes.toml; the shipped script (which cannot read it)
    must import it the same way, and the targets name only registered or declared runtimes."""
    from device_runtime.edgepack_run import RUNTIMES
    from packager.targets import get_runtime, list_runtimes, list_targets
    registry = list_runtimes()
    assert registry and all(RUNTIMES.get(rt.module) == rt.interpreter for rt in registry.values())
    assert get_runtime("tflite-runtime").op_version_limit("FULLY_CONNECTED") == 11
    assert get_runtime("tflite_runtime") is not None and get_runtime("onnxruntime") is None
    for target in list_targets().values():
        assert all(rt.interpreter and rt.label for rt in target.runtimes)


def test_a_target_names_runtimes_from_the_registry(tmp_path, monkeypatch):
    """Targets reference runtimes by name, override fields with a table, or are refused by name."""
    import pytest
    from packager.errors import UsageError
    from packager.targets import get_target
    head = 'name = "{n}"\narch = "arm64"\ndeploy = "ssh"\nremote_dir = "~/x"\ndefault_recipe = "float16"\n'
    (tmp_path / "a.toml").write_text(head.format(n="a") + 'runtimes = ["tflite-runtime"]\n')
    (tmp_path / "b.toml").write_text(head.format(n="b") + 'runtimes = [{ name = "ai-edge-litert", note = "mine" }]\n')
    (tmp_path / "c.toml").write_text(head.format(n="c") + 'runtimes = ["onnxruntime"]\n')
    monkeypatch.setenv("EDGEPACK_TARGETS_PATH", str(tmp_path))
    (tmp_path / "c.toml").rename(tmp_path / "c.off")
    a, b = get_target("a"), get_target("b")
    assert a.runtimes[0].module == "tflite_runtime" and a.runtimes[0].op_version_limit("FULLY_CONNECTED") == 11
    assert b.runtimes[0].note == "mine" and b.runtimes[0].requirements[0].startswith("ai-edge-litert")
    (tmp_path / "c.off").rename(tmp_path / "c.toml")
    with pytest.raises(UsageError) as info:
        get_target("a")
    assert "onnxruntime" in info.value.message and "runtimes.toml" in info.value.message


def test_a_transport_is_one_class(tmp_path, monkeypatch):
    """What edgepack needs to know of a way to reach devices is on its Transport class; targets name
    one by its method, and a profile naming none is refused before any model is loaded."""
    import pytest
    from packager import api
    from packager.deploy.transports import TRANSPORTS
    from packager.errors import UsageError
    from packager.targets import list_targets
    for method, cls in TRANSPORTS.items():
        assert cls.method == method and cls.tool and cls.tool_hint and cls.address and "{name}" in cls.remote_dir
        # how the CLI addresses it: deploy/run/rollback/status/verify build their device options from these
        assert cls.cli_option.startswith("--") and cls.cli_metavar and cls.cli_help and cls.label
        assert cls.address.startswith(cls.cli_option + " ")
    assert {t.deploy for t in list_targets().values()} <= set(TRANSPORTS)
    (tmp_path / "pigeon.toml").write_text('name = "pigeon"\narch = "arm64"\ndeploy = "carrier-pigeon"\n'
                                          'remote_dir = "~/x/{name}"\ndefault_recipe = "float16"\n'
                                          'runtimes = ["ai-edge-litert"]\n')
    monkeypatch.setenv("EDGEPACK_TARGETS_PATH", str(tmp_path))
    model = tmp_path / "m.h5"
    model.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(UsageError) as info:
        api.build(model, target="pigeon", recipe="float32", output=tmp_path / "out")
    assert "carrier-pigeon" in info.value.message and "ssh" in info.value.message
    assert not (tmp_path / "out").exists()


def _undocumented(tree: ast.Module, where: str) -> list[str]:
    """``where:LINE NAME`` of every public function/class of ``tree``'s module level and every public method (or
    nested class) of a public class that has no docstring."""
    found = []

    def walk(body, prefix):
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            if not ast.get_docstring(node):
                found.append(f"{where}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")
    walk(tree.body, "")
    return found


def test_public_names_have_docstrings():
    """Every public function, class and method of ``packager`` (name not starting with '_') says what it does."""
    missing = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        missing += _undocumented(ast.parse(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT)))
    assert missing == [], "public names without a docstring:\n" + "\n".join(missing)


def test_the_api_names_are_functions_whatever_was_imported_before():
    """`packager.verify` (and recipes, targets, inspect) stay the API functions even after the
    stage packages and modules were imported (a package attribute a submodule could rebind)."""
    import inspect as pyinspect
    import packager
    import packager.api, packager.recipes, packager.targets, packager.verification.report  # noqa: E401,F401
    for name in packager.__all__:
        value = getattr(packager, name)
        assert not pyinspect.ismodule(value), name
    from packager import build, inspect, recipes, targets, verify  # noqa: F401
    assert verify is packager.api.verify and callable(recipes) and "int8" in recipes()


def _manifest_lookups(tree: ast.Module, source: str) -> list[str]:
    """``LINE text`` of every raw manifest read in ``tree``: a subscript or ``.get()`` of an expression named
    ``*manifest`` (``manifest["x"]``, ``bundle.manifest.get("x")``), a ``json.loads``/``json.load`` whose argument or
    enclosing function deals with a manifest, and a call of the manifest writer ``manifest_bytes``."""
    def named_manifest(node) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return name.lower().endswith("manifest")

    def mentions_manifest(node) -> bool:
        return "manifest" in (ast.get_source_segment(source, node) or "").lower()

    found = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node
        bad = None
        if isinstance(node, ast.Subscript) and named_manifest(node.value):
            bad = "subscript"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and named_manifest(node.func.value):
                bad = ".get"
            elif node.func.attr in ("loads", "load") and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "json" and (any(mentions_manifest(a) for a in node.args) or (
                        function is not None and "manifest" in function.name.lower())):
                bad = "json.loads"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "manifest_bytes":
            bad = "manifest_bytes"
        if bad:
            found.append(f"{node.lineno} {bad}: {ast.get_source_segment(source, node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)
    visit(tree, None)
    return found


def test_the_manifest_is_read_and_written_in_one_place():
    """The bundle is one type: outside packager/bundle/manifest.py nothing looks a manifest up by key, parses
    manifest.json with json.loads, or serialises one; Manifest has no mapping interface, so raw reads cannot
    come back. A new manifest field is a property of Manifest (and its value in bundle/contents.stage)."""
    from collections.abc import Mapping
    from packager.bundle.manifest import Manifest
    assert not issubclass(Manifest, Mapping) and not hasattr(Manifest, "__getitem__") and not hasattr(Manifest, "get")
    raw = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "bundle" / "manifest.py":
            continue
        source = path.read_text(encoding="utf-8")
        raw += [f"{path.relative_to(ROOT)}:{line}" for line in _manifest_lookups(ast.parse(source), source)]
    assert raw == [], "raw manifest reads (use the Manifest's attributes, manifest.parse or Manifest.read):\n" + \
        "\n".join(raw)


def test_the_manifest_check_sees_raw_reads():
    """The check itself can fail: each raw form it forbids is found."""
    source = ("import json\ndef f(bundle, text, manifest):\n    a = manifest['name']\n    b = bundle.manifest.get('x')\n"
              "    c = json.loads(manifest_text)\n    d = manifest_bytes({})\n    return json.loads(text)\n"
              "def read_manifest(p):\n    return json.loads(p.read_text())\n")
    found = [line.split(":")[0] for line in _manifest_lookups(ast.parse(source), source)]
    assert found == ["3 subscript", "4 .get", "5 json.loads", "6 manifest_bytes", "9 json.loads"]
