"""The reference side beside the first conversion (issue 23): TensorFlow's converter holds one core, so the original
model's reference outputs and float noise run on the other while the first path converts. What it may never change:
the converted bytes, the reference outputs, the noise, the verdict, and whose error comes first. Also the two shared
pieces it relies on: native_quiet nests across threads, and only the main thread reports stages."""
import os
import threading

import numpy as np
import pytest

from packager.convert import jobs


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(3)
    inp = keras.Input((12,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="probs")(h))
    path = tmp_path_factory.mktemp("overlap") / "m.keras"
    model.save(path)
    return str(path)


REAL_NOISE = jobs.float_noise


def _prepare(path, monkeypatch, serial: bool, recipe="float32"):
    threads = []
    real = REAL_NOISE

    def noted(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)
    monkeypatch.setattr(jobs, "float_noise", noted)
    monkeypatch.setenv("EDGEPACK_SERIAL", "1" if serial else "0")
    prepared = jobs.prepare(path, recipe, "float", None, None, trust=False)
    return prepared, threads


@pytest.mark.parametrize("recipe", ["float32", "float16"])
def test_beside_the_conversion_changes_nothing_but_the_thread(keras_model, monkeypatch, recipe):
    together, where = _prepare(keras_model, monkeypatch, serial=False, recipe=recipe)
    alone, where_alone = _prepare(keras_model, monkeypatch, serial=True, recipe=recipe)
    assert where == ["edgepack-reference"] and where_alone == ["MainThread"]
    assert together.conversion.tflite == alone.conversion.tflite
    assert together.conversion.path == alone.conversion.path == "keras-concrete-function"
    assert set(together.reference) == set(alone.reference) == {"probs"}
    np.testing.assert_array_equal(together.reference["probs"], alone.reference["probs"])
    assert together.noise.keys() == alone.noise.keys() and together.noise
    for k in together.noise:
        np.testing.assert_array_equal(np.asarray(together.noise[k]), np.asarray(alone.noise[k]))
    assert [m.passed for m in together.conversion.metrics] == [m.passed for m in alone.conversion.metrics]
    assert together.check.count == alone.check.count == 64


def test_the_reference_error_comes_first(keras_model, monkeypatch):
    """A reference run that fails is raised as it was when it ran before any conversion, not swallowed by the
    thread nor replaced by what the converter says next."""
    from packager.load import formats
    real = formats.load_model

    def broken(*args, **kwargs):
        loaded = real(*args, **kwargs)
        probe = {"n": 0}
        inner = loaded.reference

        def reference(arrays):
            probe["n"] += 1
            if probe["n"] > 2:            # the probe chunks pass; the rest, in the thread, fails
                raise RuntimeError("the reference broke in the thread")
            return inner(arrays)
        loaded.reference = reference
        return loaded
    monkeypatch.setattr(formats, "load_model", broken)
    monkeypatch.setattr("packager.load.formats.load_model", broken)
    monkeypatch.setenv("EDGEPACK_SERIAL", "0")
    with pytest.raises(RuntimeError, match="the reference broke in the thread"):
        jobs.prepare(keras_model, "float32", "float", None, None, trust=False)


def test_native_quiet_nests_across_threads(capfd):
    """Entered in one thread, then another, left in the first order: fd 2 is the terminal again only after the last
    leaves, and what was written meanwhile went to the sink."""
    from packager.load.model import native_quiet
    before = os.fstat(2).st_ino
    inside, release = threading.Event(), threading.Event()

    def other():
        with native_quiet():
            inside.set()
            release.wait(5)
    with native_quiet():
        t = threading.Thread(target=other)
        t.start()
        assert inside.wait(5)
    os.write(2, b"still quiet\n")             # the other thread still holds the redirection
    assert os.fstat(2).st_ino != before
    release.set()
    t.join(5)
    assert os.fstat(2).st_ino == before
    os.write(2, b"heard\n")
    err = capfd.readouterr().err
    assert "heard" in err and "still quiet" not in err


def test_only_the_main_thread_reports_a_stage():
    from packager.contain import isolate
    seen = []
    saved = dict(isolate._STAGE)
    isolate._STAGE.update(conn=None, local=seen.append)
    try:
        isolate.stage("main")
        t = threading.Thread(target=isolate.stage, args=("thread",))
        t.start()
        t.join()
    finally:
        isolate._STAGE.clear()
        isolate._STAGE.update(saved)
    assert seen == ["main"]


def test_the_model_is_released_before_sending_only_when_that_lowers_the_peak(monkeypatch):
    """The result crosses to the parent as one message (~2x its bytes at once): the model is dropped first when that
    copy would lift the child's peak (a small model: issue 15), and not when the conversion's peak is above it (a
    large one: the release costs 0.45 s and lowers nothing); without /proc, always."""
    released = []
    monkeypatch.setattr(jobs, "_release_tensorflow_memory", lambda: released.append(1))
    result = [("float32", {"model": b"x" * (10 * 2 ** 20), "inputs": np.zeros((4, 2 ** 18), np.float32)})]
    assert jobs._nbytes(result) == 14 * 2 ** 20
    for rss_peak, release in (((1000.0, 3000.0), False), ((1000.0, 1020.0), True), (None, True)):
        released.clear()
        monkeypatch.setattr(jobs, "_memory_mib", lambda: rss_peak)
        jobs._release_before_sending(result)
        assert bool(released) is release, rss_peak
    got = jobs._memory_mib()
    assert got is None or 0 < got[0] <= got[1]
