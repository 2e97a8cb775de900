"""Nothing a contained child sends is ever unpickled: the plain-data codec (packager.contain.wire) and the
TensorFlow child's channel, attacked by a trusted model that writes a pickle down it."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from packager.contain import isolate, wire
from packager.errors import ConversionError, UsageError, VerificationError
from packager.recipes import Tolerance
from packager.tensor import Tensor


def test_roundtrip_of_plain_data():
    value = {"a": [1, 2.5, float("nan"), float("-inf"), None, True, np.float64("nan"), np.float64(3.5)], ("t", 1): (b"\x00\xff", Path("/x/y")),
             "arr": np.arange(12, dtype=np.int16).reshape(3, 4).T, "scalar": np.float32(1.5),
             "tol": Tolerance(1e-4, 1e-4, 0, 0.99, 1.0), "tensor": Tensor("x", (1, None), "float32", 0, 0.5, 3),
             "err": UsageError("bad flag", hint="use --x")}
    back = wire.decode(wire.encode(value))
    assert back["a"][:2] == [1, 2.5] and np.isnan(back["a"][2]) and back["a"][3] == float("-inf")
    assert np.isnan(back["a"][6]) and back["a"][7] == 3.5            # numpy floats (repr np.float64(nan))
    assert back[("t", 1)] == (b"\x00\xff", Path("/x/y"))
    np.testing.assert_array_equal(back["arr"], value["arr"])
    assert back["arr"].dtype == np.int16 and back["scalar"] == np.float32(1.5) and isinstance(back["scalar"], np.float32)
    assert back["tol"] == value["tol"] and back["tensor"] == value["tensor"]
    assert isinstance(back["err"], UsageError) and back["err"].hint == "use --x"


def test_not_plain_data_is_refused_on_both_sides():
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))
    with pytest.raises(TypeError):
        wire.encode(Evil())
    with pytest.raises(TypeError):
        wire.encode(np.array([object()], dtype=object))
    with pytest.raises(TypeError):
        wire.encode(RuntimeError("not an edgepack error"))
    header = b'{"v":{"$c":"os:system","f":{}},"n":0}'
    with pytest.raises(wire.WireError, match="not in a module of edgepack's plain data"):
        wire.decode(wire.MAGIC + struct.pack("<I", len(header)) + header)
    # a class of edgepack that is loaded but not marked as plain data
    header = b'{"v":{"$c":"packager.recipes:Recipe","f":{}},"n":0}'
    with pytest.raises(wire.WireError, match="not marked"):
        wire.decode(wire.MAGIC + struct.pack("<I", len(header)) + header)
    header = b'{"v":{"$e":"SystemExit","m":"x","h":null,"p":null},"n":0}'
    with pytest.raises(wire.WireError, match="not an edgepack error"):
        wire.decode(wire.MAGIC + struct.pack("<I", len(header)) + header)


@pytest.mark.parametrize("message", [
    b"", b"EPW1", pickle.dumps({"ok": 1}), b"EPW1\xff\xff\xff\xff{}",
    wire.encode([1])[:-1] + b"x" * 3, wire.encode(np.zeros(4))[:-8],          # truncated / trailing bytes
    b"EPW1" + struct.pack("<I", 8) + b'{"v":1}}',                               # not JSON
    b"EPW1" + struct.pack("<I", 20) + b'{"v":{"$x":1},"n":0}',                  # unknown tag
    b"EPW1" + struct.pack("<I", 17) + b'{"v":NaN,"n":0}  ',                     # JSON constants
])
def test_garbage_is_a_wire_error(message):
    with pytest.raises(wire.WireError):
        wire.decode(message)


def test_array_header_must_fit_its_bytes():
    blob = bytearray(wire.encode(np.zeros((2, 2), dtype=np.float64)))
    good = wire.decode(bytes(blob))
    assert good.shape == (2, 2)
    lying = bytes(blob).replace(b"(2, 2)", b"(9, 9)")
    with pytest.raises(wire.WireError, match="does not fit"):
        wire.decode(lying)
    objects = bytes(blob).replace(b"'<f8'", b"'|O' ")
    with pytest.raises(wire.WireError):
        wire.decode(objects)


# --- the channel of the TensorFlow child, attacked -------------------------------------------------------

def _payload(marker: Path) -> bytes:
    """A pickle that, when unpickled, runs a shell command that creates ``marker``."""
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def _sends_pickle(marker: str):
    """A job, run in the contained child as a model's code would run: it finds the channel to the parent and
    writes a pickle down it, then returns normally."""
    conn = isolate._STAGE["conn"]
    conn.send_bytes(_payload(Path(marker)))
    return 42


def _sends_garbage():
    isolate._STAGE["conn"].send_bytes(b"\x00" * 1000)
    return 1


@pytest.fixture
def contained(monkeypatch):
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)


def test_a_pickle_from_the_child_is_never_run(contained, tmp_path, monkeypatch):
    marker = tmp_path / "parent-ran-it"
    with pytest.raises(ConversionError) as exc:
        isolate.run(_sends_pickle, str(marker))
    assert exc.value.exit_code == 3 and "\n" not in exc.value.message
    assert "not edgepack's plain data" in exc.value.message
    assert not marker.exists()
    # the control: a parent that reads the channel as multiprocessing does (recv = unpickle) runs it
    monkeypatch.setattr(isolate, "_receive", lambda conn: conn.recv())
    with pytest.raises(Exception):  # noqa: B017 - os.system's return value is not a message either
        isolate.run(_sends_pickle, str(marker))
    assert marker.exists(), "control: unpickling what the child sends runs the child's command in the parent"


def test_garbage_from_the_child_ends_as_one_error_line(contained):
    with pytest.raises(ConversionError) as exc:
        isolate.run(_sends_garbage)
    assert exc.value.exit_code == 3 and "\n" not in exc.value.message and "bad magic" in exc.value.message


def test_errors_and_results_cross_as_plain_data(contained):
    assert isolate.run(_returns_tolerance) == Tolerance(0.1, 0.2, 3, 0.9, 0.5)
    with pytest.raises(VerificationError) as exc:
        isolate.run(_raises)
    assert exc.value.message == "nope" and exc.value.hint == "this way"


def _returns_tolerance():
    return Tolerance(0.1, 0.2, 3, 0.9, 0.5)


def _raises():
    raise VerificationError("nope", hint="this way")


def test_trusted_model_that_writes_a_pickle_gets_a_refusal(contained, tmp_path):
    """End to end: a trusted .keras whose Lambda layer writes the pickle while the model is traced."""
    import keras
    from packager import api
    marker = tmp_path / "lambda-ran-in-parent"
    sender = eval(  # noqa: S307 - the hostile model's code, a literal payload (a closure would not serialize)
        "lambda t: (__import__('sys').modules['packager.contain.isolate']._STAGE['conn'].send_bytes(%r) "
        "if 'packager.contain.isolate' in __import__('sys').modules "
        "and __import__('sys').modules['packager.contain.isolate']._STAGE['conn'] is not None else None, t * 2.0)[1]"
        % _payload(marker))
    inp = keras.Input((4,), name="x")
    out = keras.layers.Lambda(sender, name="sender")(inp)
    path = tmp_path / "sender.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ConversionError) as exc:
        api.build(path, target="rpi", recipe="float32", runtimes=["ai-edge-litert"], output=tmp_path / "out",
                  trust_model=True)
    assert "not edgepack's plain data" in exc.value.message
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_every_marked_class_is_in_a_listed_module():
    import ast
    root = Path(__file__).resolve().parent.parent
    marked = set()
    for path in (root / "packager").rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.ClassDef) and any(getattr(d, "id", None) == "plain_data" for d in n.decorator_list)
               for n in ast.walk(tree)):
            marked.add(".".join(path.relative_to(root).with_suffix("").parts))
    assert marked == set(wire.MODULES)
