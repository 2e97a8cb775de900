"""Conversion engines (packager/convert/engines.py): every recipe names a registered engine; a .tflite brought by
the user is bundled as it is (engine as-is) and verified against its reference, never against itself; the int4w
recipe quantizes int4 weights with ai-edge-quantizer and is verified like every other bundle."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from packager import api
from packager.errors import Unverified, UsageError, VerificationError

LITERT = ["ai-edge-litert"]


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory, data_files):
    """A trained digits MLP (.keras), the user's own .tflite of it (TFLiteConverter, here in the test), and its
    outputs on the held-out digits."""
    import tensorflow as tf
    from tests import models
    out = tmp_path_factory.mktemp("engines")
    mlp = models.trained_mlp(data_files["x"], data_files["y"])
    keras_path = models.keras3_v3(mlp, out)
    tflite = bytes(tf.lite.TFLiteConverter.from_keras_model(mlp).convert())
    (out / "mine.tflite").write_bytes(tflite)
    probs = mlp.predict(data_files["xt"], verbose=0)
    np.savez(out / "ref.npz", probs=probs)
    np.savez(out / "wrong.npz", probs=np.roll(probs, 3, axis=1))
    return {"dir": out, "keras": keras_path, "tflite": out / "mine.tflite", "bytes": tflite, "probs": probs,
            "ref": out / "ref.npz", "wrong": out / "wrong.npz"}


# --------------------------------------------------------------------------- the registry
def test_every_recipe_names_a_registered_engine():
    from packager.convert.engines import ENGINES, get_engine
    from packager.recipes import list_recipes
    recipes = list_recipes()
    assert {r.engine for r in recipes.values()} <= set(ENGINES)
    assert {"tflite-converter", "ai-edge-quantizer", "as-is"} <= set(ENGINES)     # an added engine needs no edit here
    for name, engine in ENGINES.items():
        assert engine.name == name and engine.describe and callable(engine.convert)
        assert engine.version()                       # the tool is installed (ai-edge-quantizer is a dependency)
    assert recipes["int8"].engine == "tflite-converter" and recipes["int4w"].engine == "ai-edge-quantizer"
    assert get_engine(recipes["as-is"]).accepts("tflite") and not get_engine(recipes["as-is"]).accepts("keras-v3")
    assert not get_engine(recipes["float16"]).accepts("tflite")


def test_an_unknown_engine_or_quantizer_recipe_is_a_clear_error(tmp_path, monkeypatch):
    import importlib
    from packager.convert.engines import get_engine, quantizer_recipe
    recipes = importlib.import_module("packager.recipes")     # the module (packager.recipes is the API function)
    text = recipes.RECIPES_FILE.read_text()
    (tmp_path / "recipes.toml").write_text(text + '\n[odd]\ndescription = "x"\nengine = "onnx-magic"\n'
                                           'needs_calibration = false\ntolerance = { atol = 1, rtol = 1, steps = 0, '
                                           'cosine_min = 0.9, flips = 0.1, max_drop = 1, spread = 1, r2_min = 0.5, '
                                           'neighbours = 0.1 }\n\n[int3]\ndescription = "x"\n'
                                           'engine = "ai-edge-quantizer"\nquantizer_recipe = "dynamic_wi3_afp32"\n'
                                           'needs_calibration = false\ntolerance = { atol = 1, rtol = 1, steps = 0, '
                                           'cosine_min = 0.9, flips = 0.1, max_drop = 1, spread = 1, r2_min = 0.5, '
                                           'neighbours = 0.1 }\n')
    monkeypatch.setattr(recipes, "RECIPES_FILE", tmp_path / "recipes.toml")
    recipes.list_recipes.cache_clear()
    try:
        odd = recipes.get_recipe("odd")
        with pytest.raises(UsageError) as info:
            get_engine(odd)
        assert "[odd]" in info.value.message and "onnx-magic" in info.value.message
        assert "tflite-converter" in info.value.hint and "ai-edge-quantizer" in info.value.hint
        with pytest.raises(UsageError) as info:
            quantizer_recipe(recipes.get_recipe("int3"))
        assert "dynamic_wi3_afp32" in info.value.message and "dynamic_wi4_afp32" in info.value.hint
        model = tmp_path / "m.keras"
        model.write_bytes(b"PK\x05\x06" + b"\0" * 18)      # an (empty) zip: sniffed as .keras, never loaded
        with pytest.raises(UsageError) as info:
            api.build(model, recipe="odd", output=tmp_path / "out")
        assert "onnx-magic" in info.value.message and not (tmp_path / "out").exists()
    finally:
        recipes.list_recipes.cache_clear()


# --------------------------------------------------------------------------- a .tflite brought by the user
def test_a_users_tflite_is_bundled_as_it_is_and_matches_its_reference_model(digits_models, data_files, tmp_path):
    result = api.build(digits_models["tflite"], reference=digits_models["keras"], data=data_files["eval"],
                       output=tmp_path / "b")          # both runtimes of rpi
    report = result.verification
    assert report.passed and report.verdict == "MATCH", report.failures
    assert {r.runtime for r in report.runtimes if r.status == "passed"} == {"ai-edge-litert", "tflite-runtime"}
    assert result.manifest.recipe == "as-is" and result.manifest.to_json()["source"]["format"] == "tflite"
    # independent: the bundle's model is the user's file, byte for byte
    bundled = (result.bundle / result.manifest.to_json()["model"]).read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == hashlib.sha256(digits_models["bytes"]).hexdigest()
    assert result.manifest.output_names == ["probs"]       # the reference model's name for the one output


def test_a_users_tflite_matches_reference_outputs(digits_models, data_files, tmp_path):
    result = api.build(digits_models["tflite"], recipe="as-is", reference_outputs=digits_models["ref"],
                       data=data_files["eval"], runtimes=LITERT, output=tmp_path / "b")
    assert result.verification.passed and result.verification.verdict == "MATCH"


def test_a_users_tflite_with_wrong_reference_outputs_is_a_mismatch(digits_models, data_files, tmp_path):
    with pytest.raises(VerificationError) as info:
        api.build(digits_models["tflite"], reference_outputs=digits_models["wrong"], data=data_files["eval"],
                  runtimes=LITERT, output=tmp_path / "b")
    assert info.value.exit_code == 4 and "does not compute what its reference" in info.value.message
    assert not (tmp_path / "b").exists()


def test_a_users_tflite_without_a_reference_is_never_a_match(digits_models, data_files, tmp_path):
    with pytest.raises(Unverified) as info:
        api.build(digits_models["tflite"], data=data_files["eval"], runtimes=LITERT, output=tmp_path / "b")
    assert info.value.exit_code == 7 and "never compared with itself" in info.value.message
    assert "--reference" in info.value.hint and not (tmp_path / "b").exists()
    result = api.build(digits_models["tflite"], data=data_files["eval"], runtimes=LITERT, verify=False,
                       output=tmp_path / "b")
    assert result.verification is None and result.manifest.to_json()["verification"]["status"] != "passed"
    assert any("nothing was verified" in w for w in result.warnings)


def test_a_users_tflite_takes_only_the_as_is_recipe(digits_models, data_files, tmp_path):
    with pytest.raises(UsageError) as info:
        api.build(digits_models["tflite"], recipe="int8", reference=digits_models["keras"], output=tmp_path / "b")
    assert "as-is" in info.value.hint
    with pytest.raises(UsageError) as info:
        api.build(digits_models["keras"], recipe="as-is", output=tmp_path / "b")
    assert "float16" in info.value.hint or "int8" in info.value.hint
    with pytest.raises(UsageError):        # reference outputs without the inputs they belong to
        api.build(digits_models["tflite"], reference_outputs=digits_models["ref"], output=tmp_path / "b")


def test_the_tflite_format_is_sniffed_by_its_identifier(digits_models, tmp_path):
    from packager.load.formats import sniff_format
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(digits_models["bytes"])
    assert sniff_format(renamed) == "tflite" and sniff_format(digits_models["tflite"]) == "tflite"
    bogus = tmp_path / "x.tflite"
    bogus.write_bytes(b"\0\0\0\0TFL2" + b"\0" * 32)
    with pytest.raises(UsageError):
        sniff_format(bogus)


# --------------------------------------------------------------------------- int4 weights: ai-edge-quantizer
def test_int4w_through_ai_edge_quantizer_matches_and_is_smaller(digits_models, data_files, tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    int4 = api.build(digits_models["keras"], recipe="int4w", data=data_files["eval"], output=tmp_path / "int4")
    report = int4.verification
    assert report.passed and report.verdict == "MATCH", report.failures
    assert {r.runtime for r in report.runtimes if r.status == "passed"} == {"ai-edge-litert", "tflite-runtime"}
    assert "ai-edge-quantizer" in int4.manifest.to_json()["source"]["conversion_path"]
    f32 = api.build(digits_models["keras"], recipe="float32", data=data_files["eval"], runtimes=LITERT,
                    output=tmp_path / "f32")
    model = (int4.bundle / int4.manifest.to_json()["model"]).read_bytes()
    assert len(model) < 0.5 * len((f32.bundle / f32.manifest.to_json()["model"]).read_bytes())
    # independent: a bare interpreter on the bundle's model agrees with Keras on >= 97% of decisions
    interp = Interpreter(model_content=model)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.resize_tensor_input(inp["index"], data_files["xt"].shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], data_files["xt"])
    interp.invoke()
    got = interp.get_tensor(out["index"])
    agree = np.mean(got.argmax(1) == digits_models["probs"].argmax(1))
    assert agree >= 0.97, agree
    # and the weights are 4-bit: smaller than TFLiteConverter's int8 weights (recipe dynamic) of the same model
    int8w = api.build(digits_models["keras"], recipe="dynamic", data=data_files["eval"], runtimes=LITERT,
                      output=tmp_path / "int8w")
    assert len(model) < len((int8w.bundle / int8w.manifest.to_json()["model"]).read_bytes())


def test_the_conversion_cache_key_holds_the_engines_version(tmp_path, monkeypatch):
    """An upgraded ai-edge-quantizer never reuses an int4 model made by the old one: the key holds its version (TF's
    converter's version is in every key already)."""
    import dataclasses
    from packager.convert import engines
    from packager.recipes import list_recipes
    from packager.verification.cache import conversion_key
    model = tmp_path / "m.keras"
    model.write_bytes(b"model bytes")
    recipes = list_recipes()
    before = {n: conversion_key(model, recipes[n], "float", None, None, False) for n in ("int4w", "int8")}
    quantizer = engines.ENGINES["ai-edge-quantizer"]
    monkeypatch.setitem(engines.ENGINES, "ai-edge-quantizer",
                        dataclasses.replace(quantizer, version=lambda: "ai-edge-quantizer 99.0 over tf"))
    assert conversion_key(model, recipes["int4w"], "float", None, None, False) != before["int4w"]
    assert conversion_key(model, recipes["int8"], "float", None, None, False) == before["int8"]


def test_a_recipe_sets_converter_flags(digits_models, data_files, tmp_path, monkeypatch):
    """A per-tensor int8 recipe is data: converter_flags = { _experimental_disable_per_channel = true } gives one scale
    per weight tensor where int8 gives one per output channel; a flag outside the allowed list is refused."""
    import importlib
    from ai_edge_litert.interpreter import Interpreter
    module = importlib.import_module("packager.recipes")
    text = module.RECIPES_FILE.read_text()
    table = text[text.index("[int8]"):].split("\n\n")[0]
    mine = tmp_path / "recipes.toml"
    mine.write_text(text + "\n" + table.replace("[int8]", "[int8-pt]") + "\nconverter_flags = "
                    "{ _experimental_disable_per_channel = true }\n")
    monkeypatch.setattr(module, "RECIPES_FILE", mine)
    module.list_recipes.cache_clear()
    try:
        scales = {}
        for name in ("int8", "int8-pt"):
            res = api.build(digits_models["keras"], recipe=name, calibration=data_files["calibration"],
                            data=data_files["eval"], runtimes=LITERT, output=tmp_path / name, use_cache=False)
            assert res.verification.passed, res.verification.failures
            it = Interpreter(model_path=str(tmp_path / name / "model.tflite"))
            scales[name] = max(len(t["quantization_parameters"]["scales"]) for t in it.get_tensor_details()
                               if t["dtype"] == np.int8)
        assert scales["int8-pt"] == 1 < scales["int8"], scales
        mine.write_text(text + "\n" + table.replace("[int8]", "[int8-x]") + "\nconverter_flags = { allow_custom_ops = true }\n")
        module.list_recipes.cache_clear()
        with pytest.raises(UsageError, match="converter_flags 'allow_custom_ops'"):
            module.list_recipes()
    finally:
        monkeypatch.undo()
        module.list_recipes.cache_clear()


def test_a_users_multi_output_tflite_maps_converter_names_in_the_models_order(tmp_path, data_files):
    """TFLiteConverter names a Keras model's outputs output_0, output_1: with the reference model they are taken in
    its output order (said in a note) and verified; the bundle's outputs carry the model's names."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(3)
    inp = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(inp, [keras.layers.Dense(3, name="zz")(h), keras.layers.Dense(3, name="aa")(h)])
    model.save(tmp_path / "multi.keras")
    (tmp_path / "multi.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x = np.load(data_files["eval"])["x"][:200].reshape(200, -1).astype(np.float32)
    np.savez(tmp_path / "eval.npz", pixels=x)
    res = api.build(tmp_path / "multi.tflite", reference=tmp_path / "multi.keras", data=tmp_path / "eval.npz",
                    runtimes=LITERT, output=tmp_path / "b")
    assert res.verification.passed and sorted(res.manifest.output_names) == ["aa", "zz"]
    assert any("output_0 -> 'zz'" in w and "output_1 -> 'aa'" in w for w in res.warnings), res.warnings
    got = fm_raw(res.bundle, {"pixels": x})
    want = model.predict(x, verbose=0)
    assert np.abs(got["zz"] - want[0]).max() < 1e-4 and np.abs(got["aa"] - want[1]).max() < 1e-4


def fm_raw(bundle, arrays):
    from tests.field_models import raw_outputs
    return raw_outputs(bundle, arrays)
