"""Shared session fixtures: one model zoo, data files and built bundles per test run.

Runtime environments (venvs, the arm64 root filesystem) are cached by content hash under
$EDGEPACK_CACHE_DIR (default ~/.cache/edgepack), so only the first run on a machine pays for them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Library calls in the test process run TensorFlow in-process (fast); the CLI tests unset this so
# the default, a contained child process, is what they exercise.
os.environ.setdefault("EDGEPACK_IN_PROCESS", "1")
# Every test converts and verifies for real; the conversion/run cache is tested on its own.
os.environ.setdefault("EDGEPACK_NO_CACHE", "1")

pytest_plugins = ["tests.adb_fixtures", "tests.ssh_fixtures"]

# Runtime environments are immutable and keyed by content: shared with the user's (no re-install
# per run). Conversion and run caches are not: each test gets its own (autouse fixture below).
from packager.paths import env_dir as _env_dir  # noqa: E402

os.environ.setdefault("EDGEPACK_ENV_DIR", str(_env_dir()))


#: The fast layer (``./dev test -m fast``, the ``fast`` marker): modules that build no model and import no TensorFlow,
#: marked here whole, minus the tests named (slow, or building a model). Modules written for the layer mark
#: themselves (``pytestmark = pytest.mark.fast``: test_golden, test_exit_codes, test_registry_coverage, ...).
FAST_MODULES = {
    "test_criteria.py": (),
    "test_units.py": (),
    "test_security_lint.py": (),
    "test_adbd_standin.py": (),
    "test_structure.py": ("test_public_api_from_a_plain_script", "test_manifest_is_typed_and_validated"),
    "test_wire.py": ("test_trusted_model_that_writes_a_pickle_gets_a_refusal",),
    "test_render.py": ("test_report_in_headless_chromium",),
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`FAST_MODULES` ``fast`` (never one marked ``slow``)."""
    for item in items:
        left_out = FAST_MODULES.get(item.path.name)
        if left_out is not None and getattr(item, "originalname", item.name) not in left_out \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own EDGEPACK_CACHE_DIR, so no test reads or writes the user's caches."""
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """Real digits: calibration.npz (200 train), eval.npz (x, y: held-out), and the arrays."""
    from tests import models
    (x, y), (xt, yt) = models.digits()
    out = tmp_path_factory.mktemp("data")
    np.savez(out / "calibration.npz", x=x[:200])
    np.savez(out / "eval.npz", x=xt, y=yt)
    return {"dir": out, "calibration": out / "calibration.npz", "eval": out / "eval.npz",
            "x": x, "y": y, "xt": xt, "yt": yt}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, data_files):
    """Every input form, generated once: name -> path."""
    from tests import models
    out = tmp_path_factory.mktemp("zoo")
    x, y = data_files["x"], data_files["y"]
    mlp = models.trained_mlp(x, y)
    return {
        "keras3_h5": models.keras3_h5(mlp, out),
        "keras3_v3": models.keras3_v3(mlp, out),
        "keras2_h5": models.keras2_h5(x, y, out, ".h5"),
        "keras2_hdf5": models.keras2_h5(x, y, out, ".hdf5"),
        "saved_model_keras": models.saved_model_keras(mlp, out),
        "saved_model_subclassed": models.saved_model_subclassed(x, y, out, with_signature=False, trained=mlp),
        "saved_model_subclassed_sig": models.saved_model_subclassed(x, y, out, with_signature=True, trained=mlp),
        "saved_model_module": models.saved_model_module(out),
        "keras_export": models.keras_export(mlp, out),
        "saved_model_old_tf": models.saved_model_old_tf(out),
        "multi_io": models.multi_io(out),
        "other_same_shapes": models.other_mlp_same_shapes(out),
    }


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, zoo, data_files):
    """The main job: the digits MLP as int8 for rpi, verified in both runtimes."""
    from packager import api
    out = tmp_path_factory.mktemp("bundles") / "digits-rpi"
    return api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=data_files["calibration"],
                     data=data_files["eval"], output=out)


@pytest.fixture(scope="session")
def runtime_python():
    """The cached ai-edge-litert environment's Python (no TensorFlow in it)."""
    from packager.verification.emulator import get_env
    from packager.targets import get_target
    return get_env(get_target("rpi").runtime("ai-edge-litert"))
