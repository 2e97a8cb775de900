"""Fuzz the device script with corrupt models and corrupt input files.

Every case must end as a clean error: an exit code from the documented set, the last stderr line
``edgepack_run: error: ...`` for non-zero codes, never a Python traceback and never a signal death
of the script's own process (a crash of the native runtime is contained by the forked child and
reported as exit code 5).

Mutated models get a manifest whose ``model_sha256``/``model_size`` match them, so the runtime
really parses them instead of the integrity check stopping everything.

Speed: a harness (HARNESS below) runs inside the runtime environment, imports the device script
once and forks one child per case that calls ``main([...])`` with ``--bundle <case dir>`` (~25 ms
of CPU per case: ~2700 cases in ~35 s on two idle cores). 200 cases, up to 40 crashers among them,
then go through the real ``python edgepack_run.py`` entry point (marked slow), and one deliberately
built crasher always does (test_crash_with_op_input_minus_one_is_contained).
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "device_runtime" / "edgepack_run.py"
SEED = 20240517
DOCUMENTED = {0, 2, 3, 4, 5, 6}
ERROR_PREFIX = "edgepack_run: error:"
CRASH_TEXT = "crashed (signal"
INTERESTING32 = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 64, 100, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]

HARNESS = r'''
"""Run fuzz cases against the device script's main() in forked children: one Python, many cases."""
import importlib.util, json, os, resource, signal, sys, time, traceback

spec_file, results_file = sys.argv[1], sys.argv[2]
spec = json.load(open(spec_file))
mod_spec = importlib.util.spec_from_file_location("edgepack_run_fuzz", spec["script"])
mod = importlib.util.module_from_spec(mod_spec)
mod_spec.loader.exec_module(mod)
mod.find_runtime()                       # imported once here; every child inherits it
devnull = os.open(os.devnull, os.O_WRONLY)
saved = os.dup(1), os.dup(2)
os.dup2(devnull, 1)
os.dup2(devnull, 2)
for argv in spec.get("warmup", []):      # lazy imports and one-time runtime set-up, done once here
    mod.main(argv + ["--no-isolate"])
sys.stdout.flush()
sys.stderr.flush()
os.dup2(saved[0], 1)
os.dup2(saved[1], 2)
cases = spec["cases"]
import gc
gc.collect()
gc.freeze()                              # fewer copy-on-write faults in the children
parallel = max(1, int(spec.get("parallel") or os.cpu_count() or 1))
timeout = float(spec.get("timeout", 30))
memory = int(spec.get("memory_bytes", 4 << 30))


def child(case):
    code = 98
    try:
        os.setpgid(0, 0)
        err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 2)
        os.dup2(devnull, 1)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        code = mod.main(case["argv"])
    except SystemExit as exc:            # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:                # what the fuzz looks for: must never happen
        traceback.print_exc()
        code = 97
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else 96)


results = {}
queue = list(reversed(cases))
running = {}


def watchdog(signum, frame):              # SIGALRM: kill cases past their deadline (waitpid resumes)
    now = time.time()
    for p, (case, start, killed) in list(running.items()):
        if not killed and now - start > timeout:
            try:
                os.killpg(p, signal.SIGKILL)
            except OSError:
                pass
            running[p] = (case, start, True)


signal.signal(signal.SIGALRM, watchdog)
signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)   # timers are not inherited by forked children
t0 = time.time()
while queue or running:
    while queue and len(running) < parallel:
        case = queue.pop()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            child(case)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        running[pid] = (case, time.time(), False)
    pid, status = os.waitpid(-1, 0)
    if pid not in running:
        continue
    case, start, killed = running.pop(pid)
    if killed or not os.WIFEXITED(status):   # the runtime child could outlive a killed parent
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        with open(case["stderr"], "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4000))
            tail = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        tail = "harness: no stderr file: %s" % exc
    if killed:
        res = {"status": "timeout"}
    elif os.WIFSIGNALED(status):
        res = {"status": "signal", "signal": os.WTERMSIG(status)}
    else:
        res = {"status": "exit", "code": os.WEXITSTATUS(status)}
    res["stderr"] = tail
    res["seconds"] = round(time.time() - start, 4)
    if case.get("output"):
        res["output_exists"] = os.path.exists(case["output"])
    results[case["id"]] = res
signal.setitimer(signal.ITIMER_REAL, 0, 0)
json.dump({"results": results, "seconds": time.time() - t0}, open(results_file, "w"))
'''


# --------------------------------------------------------------------------- flatbuffer walking
def _u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def _field(b, table, i):
    vt = table - struct.unpack_from("<i", b, table)[0]
    if 4 + 2 * i >= struct.unpack_from("<H", b, vt)[0]:
        return None
    fo = struct.unpack_from("<H", b, vt + 4 + 2 * i)[0]
    return table + fo if fo else None


def _vector(b, pos):
    v = pos + _u32(b, pos)
    return v + 4, _u32(b, v)


def _tables(b, pos):
    start, n = _vector(b, pos)
    return [start + 4 * j + _u32(b, start + 4 * j) for j in range(n)]


def flatbuffer_slots(model: bytes) -> dict:
    """Byte offsets of semantically loaded int32 fields of subgraph 0 (TFLite schema field numbers)."""
    root = _u32(model, 0)
    subgraph = _tables(model, _field(model, root, 2))[0]          # Model.subgraphs
    slots = {"op_io": [], "tensor_shape": [], "tensor_type": [], "tensor_buffer": [], "opcode_index": [],
             "subgraph_io": []}
    for op in _tables(model, _field(model, subgraph, 3)):          # SubGraph.operators
        if _field(model, op, 0):
            slots["opcode_index"].append(_field(model, op, 0))
        for fi in (1, 2):                                           # Operator.inputs / outputs
            start, n = _vector(model, _field(model, op, fi))
            slots["op_io"] += [start + 4 * j for j in range(n)]
    for tensor in _tables(model, _field(model, subgraph, 0)):      # SubGraph.tensors
        if _field(model, tensor, 0):                                # Tensor.shape
            start, n = _vector(model, _field(model, tensor, 0))
            slots["tensor_shape"] += [start + 4 * j for j in range(n)]
        if _field(model, tensor, 1):
            slots["tensor_type"].append(_field(model, tensor, 1))  # Tensor.type (a byte)
        if _field(model, tensor, 2):
            slots["tensor_buffer"].append(_field(model, tensor, 2))
    for fi in (1, 2):                                               # SubGraph.inputs / outputs
        start, n = _vector(model, _field(model, subgraph, fi))
        slots["subgraph_io"] += [start + 4 * j for j in range(n)]
    return slots


# --------------------------------------------------------------------------- model mutations
def model_mutations(model: bytes, rng: random.Random) -> list:
    """(category, bytes) pairs; deterministic for a given model and seed."""
    n = len(model)
    out = []

    def flipped(count):
        b = bytearray(model)
        for _ in range(count):
            off = rng.choice([rng.randrange(0, 4), rng.randrange(8, n)]) if rng.random() < 0.05 else rng.randrange(8, n)
            b[off] ^= 1 << rng.randrange(8)
        return bytes(b)

    for _ in range(600):
        out.append(("byte_flip", flipped(rng.choice([1, 1, 2, 3, 5, 8, 16]))))
    lengths = sorted(set(list(range(8, n, max(1, n // 300))) + [rng.randrange(8, n) for _ in range(100)]))
    for length in lengths:
        out.append(("truncate", model[:length]))
    for _ in range(250):
        size = rng.choice([8, 12, 16, 24, 32, 64, 128, 512, 4096, n, rng.randrange(8, 3 * n)])
        b = bytearray(rng.getrandbits(8) for _ in range(size))
        b[4:8] = b"TFL3"
        if rng.random() < 0.5:                      # a plausible root offset
            b[0:4] = struct.pack("<I", rng.randrange(8, max(9, size)) & ~3)
        out.append(("random_tfl3", bytes(b)))
    for _ in range(250):
        b = bytearray(model)
        off = rng.randrange(8, n)
        length = rng.choice([1, 2, 4, 8, 16, 64, 256, 1024])
        b[off:off + length] = bytes(len(b[off:off + length]))
        out.append(("zeroed", bytes(b)))
    for _ in range(350):
        b = bytearray(model)
        for _ in range(rng.randint(1, 3)):
            off = rng.randrange(8, n - 4) & ~3
            b[off:off + 4] = struct.pack("<I", rng.choice(INTERESTING32))
        out.append(("int32_field", bytes(b)))
    for value in INTERESTING32 + [n, n - 4, n + 4]:   # the root table offset itself
        b = bytearray(model)
        b[0:4] = struct.pack("<I", value & 0xFFFFFFFF)
        out.append(("header_root", bytes(b)))
    slots = flatbuffer_slots(model)
    assert slots["op_io"] and slots["tensor_shape"], slots
    for kind, offsets in slots.items():
        values = {"op_io": [-1, -2, 10_000, 0x7FFFFFFF], "subgraph_io": [-1, 10_000, 0x7FFFFFFF],
                  "tensor_shape": [0, -1, -7, 1 << 20, 0x7FFFFFFF], "tensor_buffer": [0, 9999, -1],
                  "opcode_index": [-1, 999], "tensor_type": [3, 7, 9, 17, 200]}[kind]
        for off in offsets:
            for value in values:
                b = bytearray(model)
                if kind == "tensor_type":
                    b[off] = value
                else:
                    b[off:off + 4] = struct.pack("<i", value) if value < 1 << 31 else struct.pack("<I", value)
                out.append(("schema_" + kind, bytes(b)))
    return out


# --------------------------------------------------------------------------- input mutations
def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npy_raw(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    hb = header.encode("latin1")
    if version == (1, 0):
        pad = (64 - (10 + len(hb) + 1) % 64) % 64
        hb = hb + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hb) & 0xFFFF) + hb + data
    pad = (64 - (12 + len(hb) + 1) % 64) % 64
    hb = hb + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(hb)) + hb + data


def _zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npz(arrays: dict, compressed=False) -> bytes:
    return _zip({k + ".npy": _npy_bytes(v) for k, v in arrays.items()},
                zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)


def input_mutations(x: np.ndarray, name: str, rng: random.Random) -> list:
    """(category, filename suffix, bytes, allowed exit codes) for a model with one input `name`."""
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    good = x[:5].astype(np.float32)
    ok, bad, either = {0}, {2}, {0, 2}
    out = []
    add = out.append
    # valid inputs in every accepted form: harmless, must be 0
    for k in range(12):
        arr = x[: k % 6].astype([np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_][k % 6])
        add(("valid", ".npz", _npz({name: arr}, compressed=k % 2 == 1), ok))
    add(("valid", ".npy", _npy_bytes(good), ok))
    add(("valid", ".npy", _npy_bytes(good[0]), ok))                     # one unbatched sample
    add(("valid", ".npz", _npz({"x": good}), ok))
    add(("valid", ".npz", _npz({"whatever": good}), ok))
    add(("valid", ".json", json.dumps({name: good.tolist()}).encode(), ok))
    add(("valid", ".json", json.dumps(good.tolist()).encode(), ok))
    add(("valid", ".npy", _npy_bytes(np.asfortranarray(good)), ok))
    # NaN / inf / extreme values in the right shape
    for fill in (np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0):
        arr = good.copy()
        arr[nrng.random(arr.shape) < 0.5] = fill
        add(("nan_inf", ".npz", _npz({name: arr}), ok))
        add(("nan_inf", ".npy", _npy_bytes(arr.astype(np.float64)), ok))
    add(("nan_inf", ".json", b'{"%s": [[[[NaN]]]]}' % name.encode(), bad))  # 1x1x1 is the wrong shape
    # wrong shapes
    wanted = {tuple(x.shape[1:]), tuple(x.shape[2:])}
    while sum(1 for c in out if c[0] == "wrong_shape") < 60:
        shape = tuple(int(d) for d in nrng.integers(0, 10, size=rng.randint(0, 6)))
        if shape[1:] in wanted or shape in wanted or (len(shape) == len(x.shape) and shape[1:] == x.shape[1:]):
            continue
        arr = nrng.random(shape).astype(np.float32)
        suffix = rng.choice([".npz", ".npy", ".json"])
        data = _npz({name: arr}) if suffix == ".npz" else _npy_bytes(arr) if suffix == ".npy" else \
            json.dumps({name: arr.tolist()}).encode()
        add(("wrong_shape", suffix, data, bad))
    # wrong dtypes (right shape)
    for dtype in (np.complex64, np.complex128, "U3", "S4", "datetime64[s]", "timedelta64[s]",
                  [("a", np.float32), ("b", np.int8)], object, "V8"):
        try:
            arr = np.zeros(good.shape, dtype=dtype)
        except TypeError:
            continue
        add(("wrong_dtype", ".npz", _npz({name: arr}), bad))
        add(("wrong_dtype", ".npy", _npy_bytes(arr), bad))
    for value in ('"abc"', "null", "true", '{"a": 1}', "[[1], [1, 2]]", "10" + "0" * 400, "1e400", "[]", "{}"):
        add(("wrong_dtype", ".json", ('{"%s": %s}' % (name, value)).encode(), bad))
    # huge or odd .npy headers
    for shape in ((1000000, 8, 8, 64), (1 << 40,), (1 << 62, 1 << 62), (-1, 8, 8, 1), (5, -8, 8, 1), (0, 8, 8, 1)):
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
        add(("npy_header", ".npy", _npy_raw(header), either if 0 in shape else bad))
        add(("npy_header", ".npz", _zip({name + ".npy": _npy_raw(header)}), either if 0 in shape else bad))
    for header in ("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8, 8, 1), 'extra': 1}",
                   "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (5, 8, 8, 1), }",
                   "{'descr': '|O', 'fortran_order': False, 'shape': (5, 8, 8, 1), }",
                   "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (5, 8, 8, 1), }",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (5.5, 8, 8, 1), }",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': '(5, 8, 8, 1)', }",
                   "__import__('os').system('echo pwned')",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 5000 + ")" * 5000 + "), }",
                   "[" * 100000,
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8, 8, 1), }" + " " * 70000):
        for version in ((1, 0), (2, 0), (3, 0), (9, 9)):
            # v1 lengths wrap at 64 KiB: the long padded header then parses and the padding is data
            allowed = either if version == (1, 0) and header.endswith(" ") else bad
            add(("npy_header", ".npy", _npy_raw(header, bytes(100), version), allowed))
    valid_hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8, 8, 1), }"
    add(("npy_header", ".npy", _npy_raw(valid_hdr, bytes(5 * 64 * 4 - 3)), bad))          # data one short
    add(("npy_header", ".npy", _npy_raw(valid_hdr, bytes(5 * 64 * 4 + 999)), either))    # trailing bytes
    add(("npy_header", ".npy", b"\x93NUMPY\x01\x00\xff\xff", bad))                        # header past EOF
    # truncated files at many offsets
    npz_good, npy_good, npzc_good = _npz({name: good}), _npy_bytes(good), _npz({name: good}, compressed=True)
    for data, suffix in ((npz_good, ".npz"), (npy_good, ".npy"), (npzc_good, ".npz")):
        for cut in sorted(rng.sample(range(0, len(data)), 25)):
            add(("truncated", suffix, data[:cut], bad))
    json_good = json.dumps({name: good.tolist()}).encode()
    for cut in sorted(rng.sample(range(0, len(json_good)), 15)):
        add(("truncated", ".json", json_good[:cut], bad))
    # zips whose members are not npy, or are odd
    members = [
        ({name + ".npy": b"this is not an npy file"}, bad),
        ({name + ".npy": bytes(rng.getrandbits(8) for _ in range(300))}, bad),
        ({name: _npy_bytes(good)}, either),                         # no .npy suffix
        ({name + ".npy": npz_good}, bad),                           # a zip inside the zip
        ({name + ".npy": b""}, bad),
        ({"dir/" + name + ".npy": _npy_bytes(good)}, either),
        ({"../" + name + ".npy": _npy_bytes(good)}, either),
        ({name + ".npy": _npy_bytes(good), "other.npy": b"garbage"}, bad),
        ({name + ".npy": _npy_raw(valid_hdr, bytes(5 * 64 * 4)) + b"x" * 10_000_000}, either),  # deflates to little
        ({("m%d.npy" % i): _npy_bytes(np.zeros(1, np.float32)) for i in range(300)}, bad),
    ]
    for m, allowed in members:
        add(("zip_members", ".npz", _zip(m, zipfile.ZIP_DEFLATED), allowed))
        add(("zip_members", ".npz", _zip(m), allowed))
    # byte flips in otherwise valid files
    for data, suffix in ((npz_good, ".npz"), (npy_good, ".npy"), (npzc_good, ".npz"), (json_good, ".json")):
        for _ in range(20):
            b = bytearray(data)
            for _ in range(rng.choice([1, 2, 4])):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            add(("byte_flip", suffix, bytes(b), either))
    # json oddities
    for text in (b"", b"\xff\xfe\x00garbage", b"[" * 100000 + b"]" * 100000, b'{"%s": ' % name.encode() + b"[" * 5000,
                 b"null", b"42", b'"pixels"', b'{"%s": [[[[1]]]], "%s": 1}' % (name.encode(), name.encode()),
                 json.dumps({name: good[:, :, :, 0].tolist()}).encode()):
        add(("json", ".json", text, bad))
    add(("json", ".json", json.dumps({"nope": good.tolist()}).encode(), ok))   # the only array: used as the input
    # not what the extension says
    add(("format_mismatch", ".npy", npz_good, bad))
    add(("format_mismatch", ".npz", npy_good, bad))
    add(("format_mismatch", ".bin", npz_good, ok))          # anything else is read as .npz
    add(("format_mismatch", ".json", npz_good, bad))
    add(("format_mismatch", ".npz", b"", bad))
    add(("format_mismatch", ".npz", b"PK\x05\x06" + bytes(18), either))   # an empty zip
    return out


# --------------------------------------------------------------------------- running
def _write_manifest(dst: Path, manifest: dict, model: bytes) -> None:
    m = dict(manifest, model_sha256=hashlib.sha256(model).hexdigest(), model_size=len(model))
    m["files"] = dict(m.get("files") or {}, **{m["model"]: "sha256:" + m["model_sha256"]})
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))


def _make_bundle(dst: Path, src: Path, manifest: dict, model: bytes) -> None:
    dst.mkdir(parents=True)
    (dst / manifest["model"]).write_bytes(model)
    _write_manifest(dst, manifest, model)
    (dst / "samples").symlink_to(src / "samples", target_is_directory=True)


def _check(result: dict, allowed: set, case_id: str) -> list:
    """Problems with one case's result (empty = clean)."""
    problems = []
    if result["status"] != "exit":
        return ["%s: %s %s" % (case_id, result["status"], result.get("signal", ""))]
    code, err = result["code"], result["stderr"]
    if "Traceback (most recent call last)" in err:
        problems.append("%s: traceback: %s" % (case_id, err[-800:]))
    if code not in DOCUMENTED or code not in allowed:
        problems.append("%s: exit code %s not in %s: %s" % (case_id, code, sorted(allowed), err[-300:]))
    if code != 0:
        lines = err.strip().splitlines()
        if not lines or not lines[-1].startswith(ERROR_PREFIX):
            problems.append("%s: last stderr line is not an edgepack error: %r" % (case_id, err[-300:]))
    elif result.get("output_exists") is False:
        problems.append("%s: exit 0 without writing the output" % case_id)
    return problems


@pytest.fixture(scope="module")
def fuzz_run(runtime_python, int8_bundle, data_files, tmp_path_factory):
    """Generate all cases, run them through the harness once; shared by the tests below."""
    work = tmp_path_factory.mktemp("fuzz")
    src = Path(int8_bundle.bundle)
    manifest = json.loads((src / "manifest.json").read_text())
    model = (src / manifest["model"]).read_bytes()
    rng = random.Random(SEED)
    (work / "err").mkdir()
    (work / "out").mkdir()
    started = time.perf_counter()

    sample_in = work / "sample_in.npz"
    in_name = manifest["inputs"][0]["name"]
    np.savez(sample_in, **{in_name: data_files["xt"][:3]})
    commands = [["--self-test"]] * 5 + [["--check"]] * 2 + [["--benchmark", "3", "--warmup", "1"]] + \
        [["--input", str(sample_in), "--output", None]] * 2
    cases, meta = [], {}
    for k, (category, data) in enumerate(model_mutations(model, rng)):
        cid = "m%05d" % k
        case_dir = work / "cases" / cid
        _make_bundle(case_dir, src, manifest, data)
        argv = list(rng.choice(commands))
        output = None
        if None in argv:
            output = str(work / "out" / (cid + ".npz"))
            argv[argv.index(None)] = output
        allowed = {0, 3, 5} | ({6} if argv[0] == "--self-test" else set())
        cases.append({"id": cid, "argv": ["--bundle", str(case_dir)] + argv, "stderr": str(work / "err" / cid),
                      "output": output})
        meta[cid] = {"kind": "model", "category": category, "allowed": allowed, "dir": case_dir, "argv": argv}

    # input files against the real model (one shared bundle dir)
    shared = work / "cases" / "real"
    _make_bundle(shared, src, manifest, model)
    for k, (category, suffix, data, allowed) in enumerate(input_mutations(data_files["xt"], in_name, rng)):
        cid = "i%05d" % k
        path = work / "inputs" / (cid + suffix)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        output = str(work / "out" / (cid + ".npz"))
        argv = ["--input", str(path), "--output", output]
        cases.append({"id": cid, "argv": ["--bundle", str(shared)] + argv, "stderr": str(work / "err" / cid),
                      "output": output})
        meta[cid] = {"kind": "input", "category": category, "allowed": allowed, "dir": shared, "argv": argv}
    # corrupt bundled samples: --self-test reads them
    with np.load(src / "samples" / "inputs.npz") as npz:
        sample_arrays = {k: npz[k] for k in npz.files}
    for k, (category, suffix, data, allowed) in enumerate(input_mutations(sample_arrays[in_name], in_name, rng)):
        if suffix not in (".npz", ".bin") or k % 3:
            continue
        cid = "s%05d" % k
        case_dir = work / "cases" / cid
        case_dir.mkdir(parents=True)
        (case_dir / manifest["model"]).write_bytes(model)
        _write_manifest(case_dir, manifest, model)
        (case_dir / "samples").mkdir()
        shutil.copy(src / "samples" / "expected.npz", case_dir / "samples" / "expected.npz")
        (case_dir / "samples" / "inputs.npz").write_bytes(data)
        cases.append({"id": cid, "argv": ["--bundle", str(case_dir), "--self-test"],
                      "stderr": str(work / "err" / cid), "output": None})
        meta[cid] = {"kind": "samples", "category": "samples_" + category, "allowed": allowed | {6},
                     "dir": case_dir, "argv": ["--self-test"]}
    generated = time.perf_counter() - started

    spec = work / "spec.json"
    warmup = [["--bundle", str(shared), "--self-test"], ["--bundle", str(shared), "--check"],
              ["--bundle", str(shared), "--benchmark", "2", "--warmup", "1"],
              ["--bundle", str(shared), "--input", str(sample_in), "--output", str(work / "warm.npz")]]
    spec.write_text(json.dumps({"script": str(SCRIPT), "cases": cases, "timeout": 60, "warmup": warmup,
                                "parallel": min(8, os.cpu_count() or 1)}))
    (work / "harness.py").write_text(HARNESS)
    env = dict(runtime_python.env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cpu = os.times()
    proc = subprocess.run([*runtime_python.argv, str(work / "harness.py"), str(spec), str(work / "results.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    harness_cpu = (os.times().children_user - cpu.children_user) + (os.times().children_system - cpu.children_system)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((work / "results.json").read_text())
    return {"work": work, "meta": meta, "results": data["results"], "harness_seconds": data["seconds"],
            "generate_seconds": generated, "harness_cpu_seconds": harness_cpu, "model": model, "manifest": manifest, "src": src}


def _summary(meta: dict, results: dict) -> dict:
    per_cat = collections.defaultdict(collections.Counter)
    for cid, res in results.items():
        key = res["code"] if res["status"] == "exit" else res["status"]
        per_cat[meta[cid]["category"]][key] += 1
    return {cat: dict(sorted(c.items(), key=str)) for cat, c in sorted(per_cat.items())}


def test_fuzz_models_and_inputs_in_harness(fuzz_run):
    meta, results = fuzz_run["meta"], fuzz_run["results"]
    assert set(results) == set(meta)
    problems = []
    for cid in sorted(results):
        problems += _check(results[cid], meta[cid]["allowed"], cid)
    kinds = collections.Counter(m["kind"] for m in meta.values())
    codes = collections.Counter(r.get("code", r["status"]) for r in results.values())
    tracebacks = sum("Traceback (most recent call last)" in r["stderr"] for r in results.values())
    deaths = sum(r["status"] == "signal" for r in results.values())
    timeouts = sum(r["status"] == "timeout" for r in results.values())
    contained = sorted(cid for cid, r in results.items() if CRASH_TEXT in r["stderr"])
    figures = {"cases": dict(kinds), "exit_codes": dict(sorted(codes.items(), key=str)),
               "tracebacks": tracebacks, "signal_deaths": deaths, "timeouts": timeouts,
               "crashes_contained": len(contained),
               "seconds": {"generate": round(fuzz_run["generate_seconds"], 1),
                           "harness": round(fuzz_run["harness_seconds"], 1),
                           "harness_cpu": round(fuzz_run["harness_cpu_seconds"], 1)},
               "per_category": _summary(meta, results)}
    print("\nfuzz figures: " + json.dumps(figures, indent=1))
    (fuzz_run["work"] / "figures.json").write_text(json.dumps(figures, indent=1))
    assert not problems, "%d unclean cases:\n" % len(problems) + "\n".join(problems[:40])
    assert kinds["model"] >= 2000 and kinds["input"] + kinds["samples"] >= 300, kinds
    assert tracebacks == 0 and deaths == 0 and timeouts == 0
    for cid in contained:   # contained crashes are reported as exit 5 with the runtime named
        assert results[cid]["code"] == 5, cid
        assert "ai_edge_litert" in results[cid]["stderr"].strip().splitlines()[-1]
    assert contained, "no mutation crashed the runtime: containment was not exercised"


def _run_real(argv_prefix, env, case_dir: Path, argv: list, timeout=120) -> dict:
    proc = subprocess.run([*argv_prefix, str(case_dir / "edgepack_run.py"), *argv], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode < 0:
        return {"status": "signal", "signal": -proc.returncode, "stderr": proc.stderr}
    return {"status": "exit", "code": proc.returncode, "stderr": proc.stderr}


@pytest.mark.slow  # 200 fresh interpreters (numpy + runtime imports, ~0.35 CPU s each): over 60 s on 2 cores
def test_fuzz_through_real_entry_point(fuzz_run, runtime_python):
    """A few hundred cases as the device runs them: `python <bundle>/edgepack_run.py ...`, no --bundle."""
    meta, results = fuzz_run["meta"], fuzz_run["results"]
    rng = random.Random(SEED + 1)
    crashers = sorted(cid for cid, r in results.items() if CRASH_TEXT in r["stderr"])
    assert crashers, "the harness found no crashing model"
    others = sorted(cid for cid in results if cid not in crashers)
    chosen = crashers[:40] + rng.sample(others, 200 - min(40, len(crashers)))
    for cid in chosen:   # the script beside the manifest, exactly as deployed
        case_dir = meta[cid]["dir"]
        if not (case_dir / "edgepack_run.py").exists():
            shutil.copy(SCRIPT, case_dir / "edgepack_run.py")

    def one(cid):
        m = meta[cid]
        argv = [a.replace(".npz", ".real.npz") if a.endswith(".npz") and "/out/" in a else a for a in m["argv"]]
        res = _run_real(runtime_python.argv, runtime_python.env, m["dir"], argv)
        if "--output" in argv and res["status"] == "exit" and res["code"] == 0:
            res["output_exists"] = os.path.exists(argv[argv.index("--output") + 1])
        return cid, res

    started, cpu = time.perf_counter(), os.times()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        real = dict(pool.map(one, chosen))
    seconds = time.perf_counter() - started
    cpu_seconds = (os.times().children_user - cpu.children_user) + (os.times().children_system - cpu.children_system)
    problems = []
    for cid, res in real.items():
        problems += _check(res, meta[cid]["allowed"], cid)
    contained = [cid for cid, r in real.items() if CRASH_TEXT in r["stderr"]]
    codes = collections.Counter(r.get("code", r["status"]) for r in real.values())
    print("\nreal entry point: %d cases in %.1f s (%.1f CPU s), exit codes %s, crashes contained %d"
          % (len(real), seconds, cpu_seconds, dict(sorted(codes.items(), key=str)), len(contained)))
    assert not problems, "\n".join(problems[:40])
    assert contained, "no runtime crash reached the real entry point"
    for cid in contained:
        line = real[cid]["stderr"].strip().splitlines()[-1]
        assert line.startswith(ERROR_PREFIX) and "while loading or running the model" in line and real[cid]["code"] == 5

    # The same crashing bundle without containment kills the process: containment is what saves us.
    cid = contained[0]
    bare = _run_real(runtime_python.argv, runtime_python.env, meta[cid]["dir"], meta[cid]["argv"] + ["--no-isolate"])
    assert bare["status"] == "signal", bare
    env = dict(runtime_python.env, EDGEPACK_NO_ISOLATE="1")
    assert _run_real(runtime_python.argv, env, meta[cid]["dir"], meta[cid]["argv"])["status"] == "signal"


def test_crash_with_op_input_minus_one_is_contained(runtime_python, int8_bundle, tmp_path):
    """A known crasher built on purpose: an operator input index of -1 (the 'optional tensor' marker)
    where the kernel needs a tensor makes the runtime dereference NULL."""
    src = Path(int8_bundle.bundle)
    manifest = json.loads((src / "manifest.json").read_text())
    model = (src / manifest["model"]).read_bytes()
    for k, off in enumerate(flatbuffer_slots(model)["op_io"]):
        b = bytearray(model)
        b[off:off + 4] = struct.pack("<i", -1)
        case = tmp_path / ("c%d" % k)
        _make_bundle(case, src, manifest, bytes(b))
        shutil.copy(SCRIPT, case / "edgepack_run.py")
        res = _run_real(runtime_python.argv, runtime_python.env, case, ["--self-test"])
        assert not _check(res, {0, 3, 5, 6}, case.name)
        if CRASH_TEXT in res["stderr"]:
            line = res["stderr"].strip().splitlines()[-1]
            assert res["code"] == 5 and line.startswith(ERROR_PREFIX + " ai_edge_litert")
            assert "(signal 11: SIGSEGV)" in line or "(signal 6: SIGABRT)" in line or "(signal 7: SIGBUS)" in line
            return
    pytest.fail("no operator input/output set to -1 crashed the runtime")
