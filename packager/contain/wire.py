"""Plain data across the boundary of a contained child: JSON for structure, ``.npy`` for arrays.

Whatever a contained child (the TensorFlow child of :mod:`packager.contain.isolate`) sends to
edgepack's parent crosses as one message of this format and nothing else: a child runs the user's
model, so a message is hostile input. :func:`decode` never unpickles and never calls code named by
the message: structure is JSON, arrays are ``.npy`` read with ``allow_pickle=False`` (object dtypes
refused), and the only objects it builds are

* dataclasses of edgepack marked with :func:`plain_data`, in the modules of :data:`MODULES` (a message
  names one of those or nothing is imported), from their init fields;
* :class:`~packager.errors.EdgepackError` and its subclasses, from message and hint.

Message layout (all integers little-endian)::

    b"EPW1" | u32 header length | header (UTF-8 JSON) | per blob: u64 length | blob bytes

Caps: header ``MAX_HEADER`` bytes, ``MAX_BLOBS`` blobs, nesting ``MAX_DEPTH``; the whole message is
capped by the reader (:data:`MAX_MESSAGE`, ``EDGEPACK_WIRE_MAX_MB``). Anything else raises
:class:`WireError`.
"""
from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import os
import struct
import sys
from pathlib import PurePath


MAGIC = b"EPW1"
MAX_HEADER = 64 * 1024 * 1024
MAX_BLOBS = 100_000
MAX_DEPTH = 64
#: Largest message the parent reads (bytes): the .tflite, check inputs and reference outputs.
MAX_MESSAGE = int(float(os.environ.get("EDGEPACK_WIRE_MAX_MB", 8192)) * 1024 * 1024)

_MARK = "__edgepack_plain_data__"
#: The modules whose marked dataclasses may cross (tests/test_wire.py keeps it equal to the marked ones).
MODULES = ("packager.tensor", "packager.compare", "packager.recipes", "packager.load.calibration",
           "packager.convert.converter", "packager.convert.inspect", "packager.convert.jobs", "packager.repair")


class WireError(ValueError):
    """A message that is not edgepack's plain data (``str(exc)``: what is wrong, one line)."""


def plain_data(cls):
    """Class decorator: instances of the dataclass ``cls`` may cross the boundary. Its init fields
    must themselves be plain data (numbers, strings, bytes, arrays, lists, tuples, dicts, paths,
    other marked dataclasses)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    setattr(cls, _MARK, cls.__qualname__)
    return cls


def encode(value) -> bytes:
    """``value`` as one message. Raises TypeError for anything that is not plain data."""
    blobs: list[bytes] = []
    header = json.dumps({"v": _enc(value, blobs, 0), "n": len(blobs)}, separators=(",", ":"),
                        allow_nan=False).encode()
    parts = [MAGIC, struct.pack("<I", len(header)), header]
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    return b"".join(parts)


def _enc(v, blobs: list, depth: int):
    if depth > MAX_DEPTH:
        raise TypeError("nested too deep")
    if v is None or isinstance(v, (bool, str)) and not isinstance(v, enum.Enum):
        return v
    if isinstance(v, enum.Enum):
        return _enc(v.value, blobs, depth)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else {"$f": str(float(v))}
    if isinstance(v, (bytes, bytearray, memoryview)):
        blobs.append(bytes(v))
        return {"$b": len(blobs) - 1}
    np = sys.modules.get("numpy")       # not imported yet: no value can be an array (the CLI's no-op build needs none)
    if np is not None and isinstance(v, (np.ndarray, np.generic)):
        arr = np.require(np.asarray(v), requirements="C")       # C order, 0-d kept
        if arr.dtype.hasobject:
            raise TypeError("object arrays are not plain data")
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        blobs.append(buf.getvalue())
        return {"$a": len(blobs) - 1, "s": isinstance(v, np.generic)}
    if isinstance(v, PurePath):
        return {"$p": str(v)}
    if isinstance(v, list):
        return [_enc(x, blobs, depth + 1) for x in v]
    if isinstance(v, tuple):
        return {"$t": [_enc(x, blobs, depth + 1) for x in v]}
    if isinstance(v, dict):
        return {"$d": [[_enc(k, blobs, depth + 1), _enc(x, blobs, depth + 1)] for k, x in v.items()]}
    if isinstance(v, BaseException):
        from ..errors import EdgepackError
        if not isinstance(v, EdgepackError):
            raise TypeError(f"{type(v).__name__} is not an edgepack error")
        return {"$e": type(v).__name__, "m": v.message, "h": v.hint,
                "p": getattr(v, "path", None) if isinstance(getattr(v, "path", None), str) else None}
    if dataclasses.is_dataclass(v) and not isinstance(v, type) and getattr(type(v), _MARK, None):
        cls = type(v)
        fields = {f.name: _enc(getattr(v, f.name), blobs, depth + 1) for f in dataclasses.fields(v) if f.init}
        return {"$c": f"{cls.__module__}:{cls.__qualname__}", "f": fields}
    raise TypeError(f"{type(v).__name__} is not plain data")


def decode(message: bytes):
    """The value of one message. Raises :class:`WireError` on anything malformed or not allowed."""
    view = memoryview(message)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise WireError("not an edgepack message (bad magic)")
    (hlen,) = struct.unpack("<I", view[4:8])
    if hlen > MAX_HEADER or 8 + hlen > len(view):
        raise WireError(f"header of {hlen} bytes is too large or truncated")
    try:
        header = json.loads(bytes(view[8:8 + hlen]).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"v", "n"} or type(header["n"]) is not int \
            or not 0 <= header["n"] <= MAX_BLOBS:
        raise WireError("header is not {v, n}")
    blobs, pos = [], 8 + hlen
    for _ in range(header["n"]):
        if pos + 8 > len(view):
            raise WireError("truncated blob length")
        (blen,) = struct.unpack("<Q", view[pos:pos + 8])
        pos += 8
        if pos + blen > len(view):
            raise WireError("truncated blob")
        blobs.append(view[pos:pos + blen])
        pos += blen
    if pos != len(view):
        raise WireError(f"{len(view) - pos} bytes after the last blob")
    return _dec(header["v"], blobs, 0)


def _no_constant(name: str):
    raise WireError(f"JSON constant {name} is not allowed")


def _dec(v, blobs: list, depth: int):
    if depth > MAX_DEPTH:
        raise WireError("nested too deep")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_dec(x, blobs, depth + 1) for x in v]
    if not isinstance(v, dict) or len(v) == 0:
        raise WireError(f"unexpected {type(v).__name__}")
    tag = next(iter(v))
    if tag == "$f" and set(v) == {"$f"} and v["$f"] in ("nan", "inf", "-inf"):
        return float(v["$f"])
    if tag == "$b" and set(v) == {"$b"}:
        return bytes(_blob(v["$b"], blobs))
    if tag == "$a" and set(v) == {"$a", "s"}:
        arr = _array(_blob(v["$a"], blobs))
        return arr[()] if v["s"] is True and arr.ndim == 0 else arr
    if tag == "$p" and set(v) == {"$p"} and isinstance(v["$p"], str):
        from pathlib import Path
        return Path(v["$p"])
    if tag == "$t" and set(v) == {"$t"} and isinstance(v["$t"], list):
        return tuple(_dec(x, blobs, depth + 1) for x in v["$t"])
    if tag == "$d" and set(v) == {"$d"} and isinstance(v["$d"], list):
        out = {}
        for pair in v["$d"]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise WireError("dict item is not a pair")
            key = _dec(pair[0], blobs, depth + 1)
            if not isinstance(key, (str, int, float, bool, type(None), tuple)):
                raise WireError(f"dict key of type {type(key).__name__}")
            out[key] = _dec(pair[1], blobs, depth + 1)
        return out
    if tag == "$e" and set(v) == {"$e", "m", "h", "p"}:
        return _error(v)
    if tag == "$c" and set(v) == {"$c", "f"} and isinstance(v["$c"], str) and isinstance(v["f"], dict):
        cls = _dataclass(v["$c"])
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if not set(v["f"]) <= names:
            raise WireError(f"{cls.__name__} has no field {', '.join(sorted(set(v['f']) - names))}")
        try:
            return cls(**{k: _dec(x, blobs, depth + 1) for k, x in v["f"].items()})
        except TypeError as exc:
            raise WireError(f"{cls.__name__}: {exc}") from None
    raise WireError(f"unknown tag {str(tag)[:20]!r}")


def _blob(index, blobs: list):
    if type(index) is not int or not 0 <= index < len(blobs):
        raise WireError("blob index out of range")
    return blobs[index]


def _array(data):
    """An ndarray from ``.npy`` bytes: the header read by the device script's own reader (no pickle, object
    dtypes refused), the shape checked against the bytes that follow, C order (as :func:`encode` writes)."""
    import numpy as np
    from device_runtime.edgepack_run import _peek_npy
    fh = io.BytesIO(data)
    try:
        shape, dtype = _peek_npy(fh)
    except (ValueError, OSError) as exc:
        raise WireError(f"array header: {exc}") from None
    if dtype.hasobject or any(type(d) is not int or d < 0 for d in shape):
        raise WireError("array of objects or with a bad shape")
    count = math.prod(shape)
    body = data[fh.tell():]
    if count * dtype.itemsize != len(body):
        raise WireError(f"array of shape {shape} {dtype} does not fit its {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype, count=count).copy().reshape(shape)


def _error(v: dict):
    from .. import errors
    cls = getattr(errors, v["$e"], None) if isinstance(v["$e"], str) else None
    if not (isinstance(cls, type) and issubclass(cls, errors.EdgepackError)) or not isinstance(v["m"], str) \
            or not isinstance(v["h"], (str, type(None))) or not isinstance(v["p"], (str, type(None))):
        raise WireError("not an edgepack error")
    exc = cls(v["m"], v["h"])
    if v["p"] is not None:
        exc.path = v["p"]
    return exc


def _dataclass(name: str):
    module, _, qualname = name.partition(":")
    if module not in MODULES:
        raise WireError(f"class {name[:80]!r} is not in a module of edgepack's plain data")
    import importlib
    obj = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or getattr(obj, _MARK, None) != qualname or obj.__dict__.get(_MARK) != qualname:
        raise WireError(f"class {name[:80]!r} is not marked as plain data")
    return obj
