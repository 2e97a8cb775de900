"""Hostile and broken inputs: each ends as an EdgepackError (one line + exit code in the CLI),
never a traceback, and leaves nothing at -o. Code-carrying models are refused unless trusted."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from packager import api
from packager.bundle.files import check_files, extract_archive
from packager.errors import ConversionError, EdgepackError, UsageError

LITERT = ["ai-edge-litert"]


def expect_refusal(tmp_path, model, fragment="", error=EdgepackError, **kwargs):
    out = tmp_path / "out"
    kwargs.setdefault("recipe", "float32")
    with pytest.raises(error) as exc:
        api.build(model, target="rpi", runtimes=LITERT, output=out, **kwargs)
    assert "\n" not in exc.value.message
    assert fragment in exc.value.message, exc.value.message
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))
    return exc.value


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


# ---------------------------------------------------------------- broken files of every format
@pytest.mark.parametrize("kind", ["missing", "empty", "random", "truncated_h5", "truncated_keras",
                                  "truncated_h5_tail", "not_savedmodel_dir", "corrupt_pb", "pb_random",
                                  "savedmodel_no_variables"])
def test_broken_model_files(kind, zoo, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.h5"
    if kind == "missing":
        path = tmp_path / "nope.keras"
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(rng.bytes(10_000))
    elif kind == "truncated_h5":
        truncated(zoo["keras3_h5"], path, 0.3)
    elif kind == "truncated_h5_tail":
        truncated(zoo["keras2_h5"], path, 0.9)
    elif kind == "truncated_keras":
        path = truncated(zoo["keras3_v3"], tmp_path / "m.keras", 0.6)
    elif kind == "not_savedmodel_dir":
        path = tmp_path / "dir"
        path.mkdir()
        (path / "readme.txt").write_text("hi")
    elif kind in ("corrupt_pb", "pb_random", "savedmodel_no_variables"):
        path = tmp_path / "sm"
        shutil.copytree(zoo["saved_model_keras"], path)
        pb = path / "saved_model.pb"
        if kind == "corrupt_pb":
            truncated(pb, pb, 0.5)
        elif kind == "pb_random":
            pb.write_bytes(rng.bytes(5000))
        else:
            shutil.rmtree(path / "variables")
    expect_refusal(tmp_path, path)


def test_keras_zip_with_parent_paths(zoo, tmp_path):
    path = tmp_path / "evil.keras"
    with zipfile.ZipFile(zoo["keras3_v3"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../../escaped.txt", "gotcha")
    expect_refusal(tmp_path, path, "unsafe path")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_keras_zip_bomb(zoo, tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(zoo["keras3_v3"]) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("padding.bin", b"\0" * (64 << 20))
    expect_refusal(tmp_path, path, "expand")


def _lambda_keras3(path: Path):
    import keras
    inp = keras.Input((4,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inp)
    keras.Model(inp, out).save(path)


def test_lambda_layer_refused_then_trusted(tmp_path):
    path = tmp_path / "lambda.keras"
    _lambda_keras3(path)
    err = expect_refusal(tmp_path, path, "'doubler' (Lambda)")
    assert "--trust-model" in err.hint
    res = api.build(path, target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "ok", trust_model=True)
    assert res.verification.passed


def test_legacy_h5_lambda_refused(tmp_path):
    import tf_keras as k2
    inp = k2.Input((4,), name="x")
    out = k2.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inp)
    path = tmp_path / "lambda2.h5"
    k2.Model(inp, out).save(path, save_format="h5")
    expect_refusal(tmp_path, path, "'plus_one' (Lambda)")


def test_custom_module_refused(tmp_path, zoo):
    path = tmp_path / "custom.keras"
    with zipfile.ZipFile(zoo["keras3_v3"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                cfg = json.loads(data)
                cfg["config"]["layers"][1]["module"] = "os.path"
                data = json.dumps(cfg).encode()
            dst.writestr(info, data)
    expect_refusal(tmp_path, path, "outside Keras")


def test_savedmodel_with_file_ops_refused(tmp_path):
    import tensorflow as tf

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return {"y": x + tf.cast(secret, tf.float32) * 0.0}

    m = Reader()
    path = tmp_path / "reader"
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    expect_refusal(tmp_path, path, "ReadFile")


# ---------------------------------------------------------------- data that would blow up
def npz_announcing(path: Path, shape: tuple) -> Path:
    """An .npz whose one member's header announces float32 ``shape`` but holds only 4 KiB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 4096)
    return path


def test_npz_that_would_expand_to_gigabytes(zoo, tmp_path):
    path = npz_announcing(tmp_path / "big.npz", (10_000_000, 8, 8, 1))
    expect_refusal(tmp_path, zoo["keras3_h5"], "elements", recipe="int8", calibration=path)


def test_image_bomb_not_decoded(tmp_path):
    import keras
    inp = keras.Input((8, 8, 1), name="img")
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(inp)))
    model_path = tmp_path / "img.keras"
    model.save(model_path)
    images = tmp_path / "imgs"
    images.mkdir()
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    (images / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4)
    expect_refusal(tmp_path, model_path, "100000x100000", recipe="int8", calibration=images)


def test_image_folder_calibration_works(tmp_path):
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="img")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp)))
    model_path = tmp_path / "img.keras"
    model.save(model_path)
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        png = tf.io.encode_png(rng.integers(0, 255, (16, 16, 1), dtype=np.uint8)).numpy()
        (images / f"{i:03d}.png").write_bytes(png)
    res = api.build(model_path, target="rpi", recipe="int8", calibration=images, runtimes=LITERT,
                    output=tmp_path / "b")
    assert res.verification.passed and res.verification.samples == 30


# ---------------------------------------------------------------- containment of TensorFlow
def test_timeout_in_child(zoo, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)
    monkeypatch.setenv("EDGEPACK_TIMEOUT", "1")
    monkeypatch.setenv("EDGEPACK_NO_CACHE", "1")
    err = expect_refusal(tmp_path, zoo["keras3_h5"], "longer than 1 s", error=ConversionError)
    assert "EDGEPACK_TIMEOUT" in err.hint


def test_memory_limit_in_child(zoo, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)
    monkeypatch.setenv("EDGEPACK_MEMORY_MB", "300")
    monkeypatch.setenv("EDGEPACK_NO_CACHE", "1")
    expect_refusal(tmp_path, zoo["keras3_h5"], "", error=ConversionError)


# ---------------------------------------------------------------- bundle archives
def _archive_with(tmp_path, int8_bundle, mutate) -> Path:
    src = int8_bundle.archive
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(src) as tin, tarfile.open(out, "w:gz") as tout:
        members = [(m, tin.extractfile(m).read() if m.isreg() else None) for m in tin.getmembers()]
        for m, data in mutate(members):
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    return out


def _extra(name, data=b"x", type_=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = type_, (len(data) if type_ == tarfile.REGTYPE else 0), link
    return info, (data if type_ == tarfile.REGTYPE else None)


@pytest.mark.parametrize("case,fragment", [
    ("symlink", "not a regular file"),
    ("absolute", "unsafe member path"),
    ("dotdot", "unsafe member path"),
    ("extra_file", "not named in the manifest"),
    ("duplicate", "duplicate member"),
    ("device", "not a regular file"),
    ("tampered", "checksum mismatch"),
])
def test_archive_reader_refuses(case, fragment, int8_bundle, tmp_path):
    root = int8_bundle.bundle.path.name

    def mutate(members):
        if case == "symlink":
            return members + [_extra(f"{root}/link", type_=tarfile.SYMTYPE, link="/etc/passwd")]
        if case == "absolute":
            return members + [_extra("/tmp/evil")]
        if case == "dotdot":
            return members + [_extra(f"{root}/../evil")]
        if case == "extra_file":
            return members + [_extra(f"{root}/payload.sh", b"rm -rf /")]
        if case == "duplicate":
            return members + [m for m in members if m[0].name.endswith("model.tflite")]
        if case == "device":
            return members + [_extra(f"{root}/null", type_=tarfile.CHRTYPE)]
        out = []
        for m, data in members:
            if m.name.endswith("model.tflite"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            out.append((m, data))
        return out

    archive = _archive_with(tmp_path, int8_bundle, mutate)
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UsageError) as exc:
        extract_archive(archive, dest)
    assert fragment in exc.value.message
    assert not Path("/tmp/evil").exists()


def test_archive_roundtrip_and_inspect(int8_bundle, tmp_path):
    out = extract_archive(int8_bundle.archive, tmp_path)
    assert check_files(out, json.loads((out / "manifest.json").read_text())) == []
    info = api.inspect(int8_bundle.archive)
    assert info["integrity"] == "ok" and info["kind"] == "bundle"


# ---------------------------------------------------------------- interrupted builds
FAULT_CASES = [  # (point, an earlier bundle already at -o)
    ("converted", False), ("staged", False), ("before-manifest", False), ("before-commit", False),
    ("after-commit", False), ("archive", False),
    ("before-commit", True), ("between-renames", True), ("after-exchange", True), ("after-commit", True),
]


@pytest.mark.slow
def test_killed_build_leaves_nothing_or_a_complete_bundle(zoo, tmp_path):
    """SIGKILL at each point of the build, with and without an earlier bundle at -o."""
    env = dict(os.environ, EDGEPACK_IN_PROCESS="1")
    base = [sys.executable, "-m", "packager.cli", "build", str(zoo["keras3_h5"]), "-t", "rpi", "-q", "float32",
            "--runtime", "ai-edge-litert"]
    earlier = tmp_path / "earlier"
    subprocess.run(base + ["-o", str(earlier)], env=env, check=True, capture_output=True, timeout=300)
    outcomes = {}
    for point, existing in FAULT_CASES:
        out = tmp_path / f"{point}-{existing}" / "b"
        if existing:
            shutil.copytree(earlier, out)
        proc = subprocess.run(base + ["-o", str(out)], env=dict(env, EDGEPACK_FAULT_AT=point),
                              capture_output=True, text=True, timeout=300)
        # "between-renames" is only on the path without renameat2, "after-exchange" only on the
        # path with it: the point that is off this kernel's path lets the build finish.
        assert proc.returncode in (-9, 0), (point, proc.returncode, proc.stderr[-500:])
        if proc.returncode == 0:
            assert point in ("between-renames", "after-exchange"), point
            continue
        if out.exists():
            manifest = json.loads((out / "manifest.json").read_text())
            assert check_files(out, manifest) == [], point
            assert manifest["verification"]["status"] == "passed", point
            outcomes[(point, existing)] = "complete"
        else:
            assert not existing, f"earlier bundle lost at {point}"
            outcomes[(point, existing)] = "nothing"
    assert outcomes[("converted", False)] == "nothing" and outcomes[("before-commit", False)] == "nothing"
    assert outcomes[("after-commit", False)] == "complete" and outcomes[("before-commit", True)] == "complete"
    assert ("after-exchange", True) in outcomes or ("between-renames", True) in outcomes
    # The next build cleans up what the killed ones left (staging dirs of dead pids) and succeeds.
    out = tmp_path / "before-manifest-False" / "b"
    assert list(out.parent.glob(".b.staging-*"))
    subprocess.run(base + ["-o", str(out)], env=env, check=True, capture_output=True, timeout=300)
    assert check_files(out, json.loads((out / "manifest.json").read_text())) == []
    assert not list(out.parent.glob(".b.*"))


def test_npz_header_larger_than_its_data_is_refused_before_allocation(zoo, tmp_path):
    """Under the element cap, but announcing 512 MiB the member does not hold."""
    path = npz_announcing(tmp_path / "liar.npz", (2_000_000, 8, 8, 1))
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expect_refusal(tmp_path, zoo["keras3_h5"], "truncated", recipe="int8", calibration=path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024   # KiB: nothing like 512 MiB
