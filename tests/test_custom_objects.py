"""Issue 24, item 3: a model with custom layers gets in through ``--custom-objects FILE.py|MODULE``, only with
``--trust-model``, imported inside the contained child (never in edgepack's own process), and the bundle
computes what the Keras model computes (checked by a bare ai_edge_litert interpreter, not edgepack's
comparison). Without it, the refusal is one line whose hint names ``--custom-objects FILE.py --trust-model``.

The layer files are written here; the models are built from them in this process and saved as .keras, Keras 3
.h5, and legacy tf_keras .h5."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from packager import api
from packager.contain import sandbox
from packager.errors import UsageError
from packager.load import custom
from tests import field_models as fm

ROOT = Path(__file__).resolve().parent.parent
HINT = "--custom-objects FILE.py --trust-model"

LAYERS = textwrap.dedent('''
    import builtins
    import os

    import keras

    builtins.__dict__.setdefault("_edgepack_custom_imports", []).append(os.getpid())
    if os.environ.get("EDGEPACK_TEST_PROBE"):    # inside the sandbox, the file's directory is not readable
        try:
            open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "secret.txt")).read()
        except PermissionError:
            pass
        else:
            raise RuntimeError("read the file beside the custom objects")


    @keras.saving.register_keras_serializable(package="edgepacktest")
    class Scale(keras.layers.Layer):
        """Registered: a per-feature weight, times a factor, plus 0.5."""
        def __init__(self, factor=2.0, **kw):
            super().__init__(**kw)
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")

        def call(self, x):
            return x * self.w * self.factor + 0.5

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    class Wiggle(keras.layers.Layer):
        """Not registered: tanh(x) - 0.1 x."""
        def call(self, x):
            return keras.ops.tanh(x) - 0.1 * x


    def swishy(x):
        """A custom activation function (not registered)."""
        return x * keras.ops.sigmoid(1.5 * x)
''')

TF_KERAS_LAYERS = textwrap.dedent('''
    import tf_keras


    class Shift(tf_keras.layers.Layer):
        """A tf_keras (Keras 2) layer: x * 3 - 1."""
        def call(self, x):
            return x * 3.0 - 1.0
''')


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """layers.py, the package dir (mypkg.layers on PYTHONPATH), the models and Keras's outputs on fixed inputs."""
    import keras
    root = tmp_path_factory.mktemp("custom")
    src = root / "files"
    src.mkdir()
    (src / "layers.py").write_text(LAYERS)
    (src / "secret.txt").write_text("not for the model")
    (src / "tfk_layers.py").write_text(TF_KERAS_LAYERS)
    pkg = root / "pp" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text(LAYERS)
    mod = _import_file(src / "layers.py", "edgepack_test_custom_layers")
    keras.utils.set_random_seed(7)
    inp = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, activation=mod.swishy, name="d")(inp)
    h = mod.Scale(1.5, name="scale")(h)
    out = mod.Wiggle(name="wiggle")(h)
    model = keras.Model(inp, out)
    model.save(root / "m.keras")
    model.save(root / "m.h5")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.savez(root / "eval.npz", x=x)
    expected = np.asarray(model(x, training=False))

    import tf_keras
    tfk = _import_file(src / "tfk_layers.py", "edgepack_test_tfk_layers")
    i2 = tf_keras.Input((4,), name="x")
    o2 = tfk.Shift(name="shift")(tf_keras.layers.Dense(2, name="d")(i2))
    legacy = tf_keras.Model(i2, o2)
    legacy.save(root / "legacy.h5")
    legacy_expected = np.asarray(legacy(x, training=False))
    return {"root": root, "layers": src / "layers.py", "tfk_layers": src / "tfk_layers.py", "pythonpath": root / "pp",
            "keras": root / "m.keras", "h5": root / "m.h5", "legacy": root / "legacy.h5", "eval": root / "eval.npz",
            "x": x, "expected": {"wiggle": expected}, "legacy_expected": {"shift": legacy_expected}}


def cli(*args, env=None):
    full = dict(os.environ, EDGEPACK_IN_PROCESS="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=900)


def _one_line_refusal(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [ln.split(":")[0] for ln in lines] == ["error", "hint"], proc.stderr[-2000:]
    assert "custom_object_scope" not in proc.stderr and "Traceback" not in proc.stderr
    return "\n".join(lines)


def _matches_keras(bundle: Path, x: np.ndarray, expected: dict) -> None:
    got = fm.raw_outputs(bundle, {"x": x})          # a bare ai_edge_litert Interpreter on the bundle's .tflite
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert np.max(np.abs(got[name] - want)) < 1e-5, name


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("trust", [False, True])
def test_without_custom_objects_the_refusal_names_them(made, fmt, trust, tmp_path):
    proc = cli("build", made[fmt], "-q", "float32", "-o", tmp_path / "b", *(["--trust-model"] if trust else []))
    text = _one_line_refusal(proc)
    assert any(f"'{name}'" in text or f">{name}'" in text for name in ("Scale", "Wiggle", "swishy")), text
    assert HINT in text
    assert not (tmp_path / "b").exists()


def test_custom_objects_without_trust_model_is_a_usage_error(made, tmp_path):
    proc = cli("build", made["keras"], "-q", "float32", "-o", tmp_path / "b", "--custom-objects", made["layers"])
    text = _one_line_refusal(proc)
    assert "needs --trust-model" in text and "runs that Python code" in text
    with pytest.raises(UsageError) as info:            # the library says the same, before anything loads
        api.build(made["keras"], recipe="float32", output=tmp_path / "c", custom_objects=made["layers"])
    assert info.value.exit_code == 2 and "needs --trust-model" in info.value.message


def test_resolve_refuses_what_is_not_there(tmp_path):
    for spec, words in ((tmp_path / "nope.py", "not found"), (tmp_path, "not a file"),
                        ("no_such_pkg_edgepack.layers", "no module"), ("not a module!", "neither")):
        with pytest.raises(UsageError) as info:
            custom.resolve(spec, True)
        assert words in info.value.message and info.value.exit_code == 2
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UsageError, match="not a .py file"):
        custom.resolve(tmp_path / "x.txt", True)
    assert custom.resolve(None, False) is None


# --------------------------------------------------------------------------- builds
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_builds_with_custom_objects_file(made, fmt, tmp_path):
    proc = cli("build", made[fmt], "-q", "float32", "--data", made["eval"], "-o", tmp_path / "b",
               "--custom-objects", made["layers"], "--trust-model", "--runtime", "ai-edge-litert")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _matches_keras(tmp_path / "b", made["x"], made["expected"])


def test_builds_with_a_module_on_pythonpath(made, tmp_path):
    proc = cli("build", made["keras"], "-q", "float32", "--data", made["eval"], "-o", tmp_path / "b",
               "--custom-objects", "mypkg.layers", "--trust-model", "--runtime", "ai-edge-litert",
               env={"PYTHONPATH": str(made["pythonpath"])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _matches_keras(tmp_path / "b", made["x"], made["expected"])


def test_legacy_tf_keras_h5_with_custom_objects(made, tmp_path):
    proc = cli("build", made["legacy"], "-q", "float32", "-o", tmp_path / "r")
    assert "Shift" in _one_line_refusal(proc)
    proc = cli("build", made["legacy"], "-q", "float32", "--data", made["eval"], "-o", tmp_path / "b",
               "--custom-objects", made["tfk_layers"], "--trust-model", "--runtime", "ai-edge-litert")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _matches_keras(tmp_path / "b", made["x"], made["legacy_expected"])


def test_imported_only_in_the_sandboxed_child(made, tmp_path, monkeypatch):
    """The library, contained: edgepack's own process never imports the file (the one import here is the
    test's own, to build the model); in the sandbox the file's directory is not readable; verify takes it too."""
    if not sandbox.abi_version():
        pytest.skip("no Landlock on this kernel")
    monkeypatch.setenv("EDGEPACK_IN_PROCESS", "0")
    monkeypatch.setenv("EDGEPACK_TEST_PROBE", "1")
    import builtins
    before = list(getattr(builtins, "_edgepack_custom_imports", []))
    result = api.build(made["keras"], recipe="float32", data=made["eval"], output=tmp_path / "b",
                       runtimes=["ai-edge-litert"], trust_model=True, custom_objects=made["layers"])
    assert result.verification.passed
    report = api.verify(result, reference=made["keras"], data=made["eval"], runtimes=["ai-edge-litert"],
                        trust_model=True, custom_objects=str(made["layers"]))
    assert report.passed
    assert getattr(builtins, "_edgepack_custom_imports", []) == before
    _matches_keras(result.bundle, made["x"], made["expected"])


# --------------------------------------------------------------------------- which objects
def test_collects_keras_classes_and_functions_defined_in_the_file(tmp_path):
    path = tmp_path / "objs.py"
    path.write_text(textwrap.dedent('''
        import keras
        from keras.layers import Dense          # imported, not defined here: not collected

        class Mine(keras.layers.Layer):
            pass

        class MyLoss(keras.losses.Loss):
            def call(self, y, p):
                return y - p

        class NotKeras:
            pass

        def swish2(x):
            return x * keras.ops.sigmoid(2 * x)

        def _private(x):
            return x
    '''))
    objects = custom.load(custom.resolve(path, True))
    assert {"Mine", "MyLoss", "swish2"} <= set(objects)
    assert not {"Dense", "NotKeras", "_private", "keras"} & set(objects)


def test_an_explicit_custom_objects_dict_wins(tmp_path):
    path = tmp_path / "explicit.py"
    path.write_text(textwrap.dedent('''
        import keras

        class Mine(keras.layers.Layer):
            pass

        class Other(keras.layers.Layer):
            pass

        CUSTOM_OBJECTS = {"Renamed": Mine, "Dense2": keras.layers.Dense}
    '''))
    assert set(custom.load(custom.resolve(path, True))) == {"Renamed", "Dense2"}
    path.write_text("CUSTOM_OBJECTS = [1]\n")
    with pytest.raises(UsageError, match="must be a dict"):
        custom.load(custom.resolve(path, True))
    path.write_text("raise ValueError('boom')\n")
    with pytest.raises(UsageError, match="failed to import: ValueError: boom"):
        custom.load(custom.resolve(path, True))
    # a file importing a package it cannot reach: the hint names the package to pass instead
    path.write_text("from tcn_not_here.tcn import TCN\n")
    with pytest.raises(UsageError, match="ModuleNotFoundError") as info:
        custom.load(custom.resolve(path, True))
    assert "--custom-objects tcn_not_here" in info.value.hint


def test_the_cache_key_follows_the_code(tmp_path):
    """An edited layers file is another conversion: its content is in the conversion cache key."""
    path = tmp_path / "layers.py"
    path.write_text("A = 1\n")
    first = custom.fingerprint(custom.resolve(path, True))
    path.write_text("A = 2\n")
    assert custom.fingerprint(custom.resolve(path, True)) != first
    assert api._with_custom({"atol": ["0.1"]}, None) == {"atol": ["0.1"]}


def test_a_package_gives_what_it_re_exports_from_its_own_submodules(tmp_path, monkeypatch):
    """``--custom-objects tcn`` (keras-tcn: the package re-exports TCN from tcn.tcn) takes the classes the package
    re-exports from its own submodules; what it imports from elsewhere (keras's Dense) is still not taken."""
    pkg = tmp_path / "relayers"
    (pkg / "impl").mkdir(parents=True)
    (pkg / "impl" / "__init__.py").write_text("")
    (pkg / "impl" / "core.py").write_text(textwrap.dedent('''
        import keras
        class Relayer(keras.layers.Layer):
            pass
        def relu2(x):
            return keras.ops.relu(x) ** 2
    '''))
    (pkg / "__init__.py").write_text("from keras.layers import Dense\nfrom .impl.core import Relayer, relu2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    objects = custom.load(custom.resolve("relayers", True))
    assert {"Relayer", "relu2"} <= set(objects) and "Dense" not in objects
    with pytest.raises(UsageError, match="defines no Keras layer"):     # a subpackage re-exporting nothing
        custom.load(custom.resolve("relayers.impl", True))
