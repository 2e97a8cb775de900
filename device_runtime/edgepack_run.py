#!/usr/bin/env python3
"""edgepack device script: run a bundled TFLite model with nothing but numpy and a TFLite runtime.

This one file ships inside every edgepack bundle and is exactly what the host emulator runs.
It imports no TensorFlow (unless no lighter runtime is installed) and nothing from edgepack.
It finds ``manifest.json`` next to itself (``--bundle DIR`` points it at another bundle directory).

    python3 edgepack_run.py --input in.npz --output out.npz   # inference, outputs keyed by name
    python3 edgepack_run.py --benchmark 100 --warmup 10       # latency JSON
    python3 edgepack_run.py --self-test                       # run bundled samples, compare
    python3 edgepack_run.py --info | --check
    options: --threads T, --batch B, --raw, --runtime NAME, --bundle DIR, --no-isolate

Input values are real values in the original model's units, whatever their dtype (uint8 pixels
0..255 are pixel values, not quantized codes): a quantized input gets q = round(x / scale) +
zero_point here. ``--raw`` takes integer-typed inputs as already quantized and keeps quantized
outputs as integers. The host emulator applies the same rule.

Exit codes: 0 ok, 2 bad arguments/input, 3 integrity (size, sha256, TFL3), 4 no TFLite runtime,
5 the runtime cannot load or run the model (also when it crashes), 6 self-test mismatch.
Works on Python 3.9+ with numpy 1.x or 2.x.

Crash containment: after the integrity and input-file checks, everything that touches the TFLite
runtime (import, load, allocate, invoke) runs in one forked child where ``os.fork`` exists (Linux,
Android; not macOS, where fork after numpy's Accelerate is unsafe; not Windows). If a corrupt or
hostile model makes the native runtime die by a signal, this process reports it as one error line
and exit code 5 instead of dying itself. ``--no-isolate`` (or ``EDGEPACK_NO_ISOLATE=1``) runs it in
this process instead. ``--info`` always runs in-process. SIGINT/SIGTERM/SIGHUP are passed on to the
child, which dies of them at once (even inside a long invoke); this process then dies of the same
signal.

Memory: ``EDGEPACK_RUNTIME_MEMORY_MB`` sets an address-space limit (RLIMIT_AS) on that child (none
by default on a device; the host emulator sets 4096); a model that needs more ends as exit code 5
naming the limit, instead of waking the kernel's OOM killer.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import signal
import sys
import time
import zipfile

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_NO_RUNTIME = 4
EXIT_RUNTIME = 5
EXIT_SELFTEST = 6
#: The one table of what this script's exit codes mean: the host (emulator, deploy, README test) reads it here.
EXIT_MEANINGS = {
    EXIT_OK: "ok",
    EXIT_USAGE: "bad arguments or input",
    EXIT_INTEGRITY: "integrity check failed",
    EXIT_NO_RUNTIME: "no TFLite runtime",
    EXIT_RUNTIME: "runtime cannot load or run the model",
    EXIT_SELFTEST: "self-test mismatch",
}

# Hard caps on what an input file may make us allocate (elements of all arrays together).
MAX_INPUT_ELEMENTS = int(os.environ.get("EDGEPACK_MAX_INPUT_ELEMENTS", str(1 << 28)))
# The runtimes this script imports, in order of preference: import name -> module holding the
# Interpreter class. TensorFlow is the last resort (only its TFLite interpreter is used). The host's
# registry (packager/runtimes.toml) names these; a test checks every registered runtime is here.
RUNTIMES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite.python.interpreter",
}
# Address-space limit (MiB) of the forked child that loads and runs the model; unset or 0: none.
MEMORY_ENV = "EDGEPACK_RUNTIME_MEMORY_MB"

np = None  # run as a script: imported by _load_numpy() in the forked child, so the parent forks a small process
if __name__ != "__main__":  # imported as a module (packager uses read_inputs & co.): imported when first used


    class _Numpy:  # the host validates manifests (check_manifest) before it needs numpy; an unchanged build: never
        def __getattr__(self, name):
            global np
            import numpy
            np = numpy
            return getattr(numpy, name)

    np = _Numpy()


def _load_numpy():
    global np
    if np is None:
        try:
            import numpy
        except ModuleNotFoundError:
            raise Failure(EXIT_NO_RUNTIME, "numpy is not installed: pip install numpy") from None
        except ImportError as exc:  # installed but not loadable (e.g. a shared library, memory)
            raise Failure(EXIT_NO_RUNTIME, "numpy cannot be imported: %s" % exc) from None
        np = numpy


class Failure(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = " ".join(str(message).split())
        if len(self.message) > 1000:  # runtimes can repeat one complaint per node
            self.message = self.message[:997] + "..."


# --------------------------------------------------------------------------- runtime
def find_runtime(preferred: str | None = None):
    """Return (Interpreter class, runtime name, runtime version) of the first runtime found."""
    order = [preferred] if preferred else list(RUNTIMES)
    errors = []
    for name in order:
        if name not in RUNTIMES:
            raise Failure(EXIT_USAGE, "unknown runtime %r; choose from %s" % (name, ", ".join(RUNTIMES)))
        try:
            Interpreter = importlib.import_module(RUNTIMES[name]).Interpreter
        except (ImportError, AttributeError) as exc:
            errors.append("%s (%s)" % (name, exc))
            continue
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) or _dist_version(name)
        return Interpreter, name, version
    raise Failure(EXIT_NO_RUNTIME, "no TFLite runtime importable: " + "; ".join(errors)
                  + ". Install one: pip install ai-edge-litert  (or tflite-runtime==2.14.0 'numpy<2')")


def _dist_version(module_name: str) -> str:
    try:
        from importlib.metadata import version
        return version(module_name.replace("_", "-"))
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- bundle
def bundle_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def read_manifest(root: str) -> dict:
    path = os.path.join(root, "manifest.json")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(16 << 20)
        manifest = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise Failure(EXIT_INTEGRITY, "cannot read %s: %s" % (path, exc.strerror or exc)) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Failure(EXIT_INTEGRITY, "manifest.json is not valid JSON: %s" % exc) from None
    check_manifest(manifest)
    return manifest


def _bad(msg: str) -> Failure:
    return Failure(EXIT_INTEGRITY, "manifest.json: " + msg)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


def _check_relpath(key: str, value) -> None:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        raise _bad("%s must be a file name inside the bundle, not %.80r" % (key, value))


def _check_tensor(kind: str, i: int, spec) -> None:
    where = "%s[%d]" % (kind, i)
    if not isinstance(spec, dict):
        raise _bad("%s is not an object" % where)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise _bad("%s has no name" % where)
    if not _is_int(spec.get("index")) or spec["index"] < 0:
        raise _bad("%s (%.80r) has no valid tensor index" % (where, spec["name"]))
    if not isinstance(spec.get("dtype"), str) or not 0 < len(spec["dtype"]) <= 32:
        raise _bad("%s (%.80r) has dtype %.40r" % (where, spec["name"], spec.get("dtype")))
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_is_int(d) and d >= -1 for d in shape):
        raise _bad("%s (%.80r) has shape %.80r; a list of integers >= -1 is needed" % (where, spec["name"], shape))
    q = spec.get("quantization")
    if q is not None:
        if not isinstance(q, dict) or not _is_number(q.get("scale") or 0.0) or not _is_int(q.get("zero_point") or 0) \
                or (q.get("scale") or 0.0) < 0:
            raise _bad("%s (%.80r) has invalid quantization %.120r" % (where, spec["name"], q))


def check_manifest(manifest) -> None:
    """Every field the script reads has the type it needs: a malformed manifest is one error line
    and exit code 3, never a traceback."""
    if not isinstance(manifest, dict):
        raise _bad("not a JSON object")
    for key in ("model", "inputs", "outputs", "model_sha256", "model_size"):
        if key not in manifest:
            raise Failure(EXIT_INTEGRITY, "manifest.json has no %r" % key)
    _check_relpath("model", manifest["model"])
    sha = manifest["model_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _bad("model_sha256 is not a sha256 hex digest")
    if not _is_int(manifest["model_size"]) or manifest["model_size"] < 0:
        raise _bad("model_size is not a byte count")
    for kind in ("inputs", "outputs"):
        specs = manifest[kind]
        if not isinstance(specs, list) or not specs or len(specs) > 4096:
            raise _bad("%s must be a non-empty list of tensors" % kind)
        for i, spec in enumerate(specs):
            _check_tensor(kind, i, spec)
        names = [s["name"] for s in specs]
        if len(set(names)) != len(names):
            raise _bad("%s has duplicate names" % kind)
    samples = manifest.get("samples")
    if samples is not None:
        if not isinstance(samples, dict):
            raise _bad("samples is not an object")
        for key in ("inputs", "expected"):
            if samples.get(key) is not None:
                _check_relpath("samples." + key, samples[key])
        atol = samples.get("atol")
        if atol is not None and (not isinstance(atol, dict) or not all(_is_number(v) for v in atol.values())):
            raise _bad("samples.atol must map output names to numbers")


def _inside(root: str, rel: str) -> str:
    path = os.path.normpath(os.path.join(root, rel))
    if os.path.isabs(rel) or not path.startswith(os.path.normpath(root) + os.sep):
        raise Failure(EXIT_INTEGRITY, "manifest names a path outside the bundle: %r" % rel)
    return path


def load_model_bytes(root: str, manifest: dict) -> bytes:
    path = _inside(root, manifest["model"])
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise Failure(EXIT_INTEGRITY, "model file %s: %s" % (manifest["model"], exc.strerror or exc)) from None
    if size != int(manifest["model_size"]):
        raise Failure(EXIT_INTEGRITY, "model size %d bytes differs from manifest (%d)" % (size, manifest["model_size"]))
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise Failure(EXIT_INTEGRITY, "%s is not a TFLite flatbuffer (no TFL3 identifier)" % manifest["model"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["model_sha256"]:
        raise Failure(EXIT_INTEGRITY, "model sha256 %s... differs from manifest %s..." % (digest[:12], manifest["model_sha256"][:12]))
    return data


# --------------------------------------------------------------------------- inputs
def _peek_npy(fh):
    """Read an .npy header only: (shape, dtype) without allocating the array."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError("unsupported .npy version %s" % (version,))
    return shape, dtype


def _check_header(key: str, shape, dtype, available=None) -> None:
    """Refuse non-numeric dtypes, element counts over the cap, and headers that announce more
    data than the file holds (checked before numpy allocates the array)."""
    if dtype.hasobject or dtype.kind not in "biuf":
        raise Failure(EXIT_USAGE, "input %r has dtype %s; only numeric arrays are accepted" % (key, dtype))
    count = 1
    for dim in shape:
        count *= int(dim)
    if count > MAX_INPUT_ELEMENTS:
        raise Failure(EXIT_USAGE, "input %r would hold %d elements (cap %d)" % (key, count, MAX_INPUT_ELEMENTS))
    if available is not None and count * dtype.itemsize > available:
        raise Failure(EXIT_USAGE, "input %r announces %d bytes of data but holds %d (truncated?)"
                      % (key, count * dtype.itemsize, available))
    return count


def _require_regular_file(path: str) -> None:
    """FIFOs, devices, sockets and directories are refused before they are opened (no hang)."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise Failure(EXIT_USAGE, "cannot read input %s: %s" % (path, exc.strerror or exc)) from None
    if not stat.S_ISREG(mode):
        raise Failure(EXIT_USAGE, "input %s is not a regular file" % path)


def _load_npy(fh, key: str, size=None):
    start = fh.tell()
    shape, dtype = _peek_npy(fh)
    _check_header(key, shape, dtype, None if size is None else size - (fh.tell() - start))
    fh.seek(start)
    return np.load(fh, allow_pickle=False)


def read_inputs(path: str, specs: list) -> dict:
    """Arrays keyed by input name from .npz, .npy or .json; sizes checked before allocation."""
    names = [s["name"] for s in specs]
    _require_regular_file(path)
    try:
        if path.endswith(".json"):
            with open(path, "rb") as fh:
                raw = json.loads(fh.read(64 << 20).decode("utf-8"))
            if isinstance(raw, list):
                raw = {names[0]: raw} if len(names) == 1 else None
            if not isinstance(raw, dict):
                raise Failure(EXIT_USAGE, "JSON input must be an object keyed by input name")
            arrays = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
        elif path.endswith(".npy"):
            with open(path, "rb") as fh:
                arrays = {names[0]: _load_npy(fh, names[0], os.fstat(fh.fileno()).st_size)}
        else:
            arrays, total = {}, 0
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    key = member[:-4] if member.endswith(".npy") else member
                    with zf.open(member) as fh:
                        shape, dtype = _peek_npy(fh)
                        header = fh.tell()
                    total += _check_header(key, shape, dtype, zf.getinfo(member).file_size - header)
                    if total > MAX_INPUT_ELEMENTS:  # the cap is for the whole file, not per array
                        raise Failure(EXIT_USAGE, "%s would hold %d elements in all (cap %d)"
                                      % (os.path.basename(path), total, MAX_INPUT_ELEMENTS))
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a corrupt file raises, it is a bad input
        raise Failure(EXIT_USAGE, "cannot read input %s: %s: %s" % (path, type(exc).__name__, exc)) from None
    if len(names) == 1 and names[0] not in arrays:
        if len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        elif "x" in arrays:
            arrays = {names[0]: arrays["x"]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise Failure(EXIT_USAGE, "input file lacks %s (has %s)" % (", ".join(missing), ", ".join(sorted(arrays)) or "nothing"))
    return {n: arrays[n] for n in names}


def _expand_single(array, spec):
    """Accept one unbatched sample for a model with a batch axis."""
    shape = spec["shape"]
    if array.ndim == len(shape) - 1:
        array = array[None, ...]
    if array.ndim != len(shape):
        raise Failure(EXIT_USAGE, "input %r has shape %s; the model expects %s (first axis = samples)"
                      % (spec["name"], list(array.shape), shape))
    for got, want in zip(array.shape[1:], shape[1:]):
        if want != -1 and got != want:
            raise Failure(EXIT_USAGE, "input %r has shape %s; the model expects %s (first axis = samples)"
                          % (spec["name"], list(array.shape), shape))
    return array


# --------------------------------------------------------------------------- runner
class Runner:
    """Owns one interpreter; tensors are allocated once per batch size."""

    def __init__(self, model: bytes, manifest: dict, threads: int | None = None, runtime: str | None = None,
                 found: tuple | None = None):
        Interpreter, self.runtime, self.runtime_version = found or find_runtime(runtime)
        self.manifest = manifest
        start = time.perf_counter()
        try:
            kwargs = {"model_content": model}
            if threads:
                kwargs["num_threads"] = threads
            self.interp = Interpreter(**kwargs)
            self.interp.allocate_tensors()
        except Exception as exc:  # the runtime's own error text names the op and version
            raise Failure(EXIT_RUNTIME, "%s %s cannot load the model: %s" % (self.runtime, self.runtime_version, exc)) from None
        self.init_seconds = time.perf_counter() - start
        details_in = {d["index"]: d for d in self.interp.get_input_details()}
        details_out = {d["index"]: d for d in self.interp.get_output_details()}
        self.inputs = [self._bind(spec, details_in) for spec in manifest["inputs"]]
        self.outputs = [self._bind(spec, details_out) for spec in manifest["outputs"]]
        self.dynamic = all(i["signature"][:1] == [-1] for i in self.inputs) if self.inputs else False
        self.variable = any(-1 in i["signature"][1:] for i in self.inputs)
        self.batch = None
        self.shapes = None

    def _bind(self, spec: dict, details: dict) -> dict:
        idx = spec["index"]
        if idx not in details:
            raise Failure(EXIT_INTEGRITY, "manifest tensor %r (index %d) is not a model input/output" % (spec["name"], idx))
        d = details[idx]
        dtype = np.dtype(d["dtype"])
        if dtype.name != spec["dtype"]:
            raise Failure(EXIT_INTEGRITY, "tensor %r is %s in the model, %s in the manifest" % (spec["name"], dtype.name, spec["dtype"]))
        q = spec.get("quantization") or {}
        scale, zero = float(q.get("scale") or 0.0), int(q.get("zero_point") or 0)
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        sig = [int(v) for v in d.get("shape_signature", d["shape"])]
        return {"name": spec["name"], "index": idx, "dtype": dtype, "scale": scale, "zero": zero,
                "lo": info.min if info else None, "hi": info.max if info else None,
                "signature": sig, "spec": spec}

    def _ensure_batch(self, batch: int, arrays=None) -> None:
        """Resize the inputs to ``batch`` samples (dynamic-batch models) and, for variable-length
        axes (-1 in the signature besides the batch), to the real lengths of ``arrays``; never to -1."""
        shapes = tuple(tuple(a.shape[1:]) for a in arrays) if (arrays is not None and self.variable) else None
        if self.batch == batch and self.shapes == shapes:
            return
        if self.dynamic or self.variable:
            for k, t in enumerate(self.inputs):
                rest = list(shapes[k]) if shapes is not None else [d if d > 0 else 1 for d in t["signature"][1:]]
                first = batch if self.dynamic else max(1, t["signature"][0])
                self.interp.resize_tensor_input(t["index"], [first] + rest)
            self.interp.allocate_tensors()
        self.batch, self.shapes = batch, shapes

    def _prepare(self, t: dict, array, raw: bool = False):
        """One rule for every input file, here and in the host emulator: values are real values in
        the original model's units, whatever their dtype, and a quantized input gets
        ``q = round(x / scale) + zero_point`` (clipped). With ``raw``, integer-typed arrays are taken
        as already quantized and passed through unchanged (floats are still quantized). Unquantized
        inputs are cast to the tensor's dtype."""
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs: garbage in, no warning noise
            if array.dtype.kind == "f" and array.size:
                bad = float(np.mean(~np.isfinite(array)))
                if bad > 0:
                    warn("input %r: %.0f%% of the values are NaN or Inf; the outputs computed from them mean "
                         "nothing" % (t["name"], 100 * bad))
            if t["scale"] and not (raw and array.dtype.kind in "iu"):
                q = np.round(array.astype(np.float64) / t["scale"]) + t["zero"]
                outside = float(np.mean((q < t["lo"]) | (q > t["hi"]))) if q.size else 0.0
                if outside > 0.01:
                    warn("input %r: %.0f%% of the values fall outside the quantized range [%.4g, %.4g] and are "
                         "clipped; input values are real values in the model's units (pass --raw for "
                         "already-quantized codes)" % (t["name"], 100 * outside, (t["lo"] - t["zero"]) * t["scale"],
                                                      (t["hi"] - t["zero"]) * t["scale"]))
                return np.clip(q, t["lo"], t["hi"]).astype(t["dtype"])
            if t["dtype"].kind in "iu" and array.dtype.kind == "f" and array.size \
                    and not np.array_equal(array, np.round(array)):
                raise Failure(EXIT_USAGE, "input %r is %s (ids or indices) but the file holds non-integer values"
                              % (t["name"], t["dtype"].name))
            return array.astype(t["dtype"], copy=False)

    def run(self, arrays: dict, raw: bool = False, chunk: int = 64) -> dict:
        arrays = {t["name"]: _expand_single(arrays[t["name"]], t["spec"]) for t in self.inputs}
        counts = {a.shape[0] for a in arrays.values()}
        if len(counts) != 1:
            raise Failure(EXIT_USAGE, "inputs have different sample counts: %s" % sorted(counts))
        n = counts.pop()
        prepared = [np.ascontiguousarray(self._prepare(t, arrays[t["name"]], raw)) for t in self.inputs]
        batch = min(n, chunk) if self.dynamic else max([1] + self.inputs[0]["signature"][:1])
        self._ensure_batch(max(batch, 1), prepared)
        batch = self.batch
        results = [None] * len(self.outputs)
        interp = self.interp
        in_idx = [t["index"] for t in self.inputs]
        out_idx = [t["index"] for t in self.outputs]
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            for idx, data in zip(in_idx, prepared):
                part = data[start:stop]
                if stop - start < batch:  # pad the last chunk instead of re-allocating
                    pad = np.zeros((batch - (stop - start),) + part.shape[1:], dtype=part.dtype)
                    part = np.concatenate([part, pad])
                interp.set_tensor(idx, part)
            interp.invoke()
            for k, idx in enumerate(out_idx):
                out = interp.get_tensor(idx)
                if results[k] is None:
                    results[k] = np.empty((n,) + out.shape[1:], dtype=out.dtype)
                results[k][start:stop] = out[: stop - start]
        final = {}
        for t, value in zip(self.outputs, results):
            if value is None:
                value = np.empty([0] + [max(d, 0) for d in t["signature"][1:]], dtype=t["dtype"])
            if t["scale"] and not raw:
                value = (value.astype(np.float32) - t["zero"]) * np.float32(t["scale"])
            final[t["name"]] = value
        return final

    def synthetic_inputs(self, n: int, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        out = {}
        for t in self.inputs:
            shape = [n] + [d if d > 0 else 1 for d in t["signature"][1:]]
            domain = t["spec"].get("domain")
            if t["dtype"].kind == "f" or t["scale"]:
                out[t["name"]] = rng.random(shape, dtype=np.float32)
            else:
                lo, hi = domain if domain else (0, 2)
                out[t["name"]] = rng.integers(lo, hi, size=shape).astype(t["dtype"])
        return out


# --------------------------------------------------------------------------- commands
def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def write_outputs(path: str, outputs: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **outputs)
    os.replace(tmp, path)


def cmd_benchmark(runner: Runner, n: int, warmup: int, root: str, manifest: dict) -> dict:
    samples = _sample_inputs(root, manifest)
    one = {k: v[:1] for k, v in samples.items()} if samples else runner.synthetic_inputs(1)
    batch = 1 if runner.dynamic else max(1, runner.inputs[0]["signature"][0]) if runner.inputs else 1
    prepared = [np.ascontiguousarray(runner._prepare(t, _expand_single(one[t["name"]], t["spec"])))
                for t in runner.inputs]
    prepared = [np.concatenate([p] * batch) if p.shape[0] != batch else p for p in prepared]
    runner._ensure_batch(batch, prepared)
    interp = runner.interp
    for t, data in zip(runner.inputs, prepared):
        interp.set_tensor(t["index"], data)
    for _ in range(warmup):
        interp.invoke()
    times = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        interp.invoke()
        times.append((clock() - t0) * 1000.0)
    times.sort()

    def pct(p):
        return times[min(len(times) - 1, int(round(p / 100.0 * (len(times) - 1))))] if times else None

    return {"runs": n, "warmup": warmup, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "mean_ms": (sum(times) / len(times)) if times else None, "init_ms": runner.init_seconds * 1000.0,
            "peak_rss_mb": peak_rss_mb(), **_platform_info(runner)}


def _sample_inputs(root: str, manifest: dict):
    rel = (manifest.get("samples") or {}).get("inputs")
    if not rel:
        return None
    return read_inputs(_inside(root, rel), manifest["inputs"])


def cmd_self_test(runner: Runner, root: str, manifest: dict) -> dict:
    samples = manifest.get("samples") or {}
    if not samples.get("inputs") or not samples.get("expected"):
        raise Failure(EXIT_USAGE, "this bundle has no samples to self-test with")
    got = runner.run(_sample_inputs(root, manifest))
    expected = read_inputs(_inside(root, samples["expected"]), manifest["outputs"])
    atol = samples.get("atol") or {}
    report = {"passed": True, "outputs": {}, **_platform_info(runner)}
    for name, want in expected.items():
        have = got[name].astype(np.float64)
        tol = float(atol.get(name, 1e-5))
        if have.shape != want.shape:  # reported as Infinity: consumers format this number
            err = float("inf")
        else:
            err = float(np.max(np.abs(have - want.astype(np.float64)))) if want.size else 0.0
        ok = bool(err <= tol)
        report["outputs"][name] = {"max_abs_err": err, "atol": tol, "passed": ok}
        report["passed"] = report["passed"] and ok
    return report


def _platform_info(runner: Runner | None) -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__ if np is not None else None}
    if runner is not None:
        info.update(runtime=runner.runtime, runtime_version=runner.runtime_version)
    return info


_VALUED = {"--input": str, "--output": str, "--benchmark": int, "--warmup": int, "--threads": int, "--batch": int,
           "--runtime": str, "--bundle": str}
_FLAGS = ("--self-test", "--info", "--check", "--raw", "--no-isolate")


def _fast_args(argv):
    """The well-formed common case without importing argparse (~20 ms); None -> argparse decides."""
    vals = {"input": None, "output": None, "benchmark": None, "warmup": 5, "threads": None, "batch": 64,
            "runtime": os.environ.get("EDGEPACK_RUNTIME") or None, "bundle": None,
            "self_test": False, "info": False, "check": False, "raw": False, "no_isolate": False}
    i, seen = 0, set()
    while i < len(argv):
        a = argv[i]
        if a in seen:
            return None
        seen.add(a)
        if a in _FLAGS:
            vals[a[2:].replace("-", "_")] = True
            i += 1
        elif a in _VALUED and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            try:
                vals[a[2:]] = _VALUED[a](argv[i + 1])
            except ValueError:
                return None
            i += 2
        else:
            return None
    modes = [m for m in ("input", "benchmark") if vals[m] is not None] + [m for m in ("self_test", "info", "check") if vals[m]]
    if len(modes) != 1 or (vals["input"] and not vals["output"]) or (vals["benchmark"] is not None and vals["benchmark"] < 1) \
            or (vals["runtime"] is not None and vals["runtime"] not in RUNTIMES):
        return None
    import types
    return types.SimpleNamespace(**vals)


def parse_args(argv):
    fast = _fast_args(argv)
    if fast is not None:
        return fast
    import argparse
    p = argparse.ArgumentParser(prog="edgepack_run.py", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", help="inputs: .npz keyed by input name (or one array), .npy, or .json")
    mode.add_argument("--benchmark", type=int, metavar="N", help="time N invocations; JSON on stdout")
    mode.add_argument("--self-test", action="store_true", help="run the bundled samples and compare")
    mode.add_argument("--info", action="store_true", help="runtime, python, numpy and CPU as JSON")
    mode.add_argument("--check", action="store_true", help="check integrity and load the model")
    p.add_argument("--output", help="where --input writes outputs (.npz keyed by output name)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=64, help="samples per invoke for dynamic-batch models")
    p.add_argument("--raw", action="store_true", help="integer-typed inputs are already quantized (passed through "
                   "unchanged) and quantized outputs stay integers; without it input values are real values, "
                   "whatever their dtype, quantized here with the input's scale and zero point")
    p.add_argument("--runtime", choices=RUNTIMES, default=os.environ.get("EDGEPACK_RUNTIME") or None)
    p.add_argument("--bundle", metavar="DIR", default=None,
                   help="bundle directory holding manifest.json (default: this script's directory)")
    p.add_argument("--no-isolate", action="store_true",
                   help="load and run the model in this process, not in a forked child (also EDGEPACK_NO_ISOLATE=1)")
    args = p.parse_args(argv)
    if args.input and not args.output:
        p.error("--input needs --output")
    if args.benchmark is not None and args.benchmark < 1:
        p.error("--benchmark needs N >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.info:
            _load_numpy()
            try:
                find = find_runtime(args.runtime)
                info = dict(_platform_info(None), runtime=find[1], runtime_version=find[2])
            except Failure as exc:
                info = dict(_platform_info(None), runtime=None, error=exc.message)
            print(json.dumps(info))
            return EXIT_OK
        # Integrity and input files first, in this process: their errors come at once.
        root = os.path.abspath(args.bundle) if args.bundle else bundle_dir()
        manifest = read_manifest(root)
        model = load_model_bytes(root, manifest)

        def work(announce=None):
            _load_numpy()
            inputs = read_inputs(args.input, manifest["inputs"]) if args.input else None
            if inputs is not None:  # shapes checked against the manifest before the model is loaded
                inputs = {spec["name"]: _expand_single(inputs[spec["name"]], spec) for spec in manifest["inputs"]}
            return run_model(args, root, manifest, model, inputs, announce)

        if args.no_isolate or os.environ.get("EDGEPACK_NO_ISOLATE", "") not in ("", "0") or not can_isolate():
            return work()
        return run_isolated(work)
    except Failure as exc:
        report(exc)
        return exc.code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        report(Failure(EXIT_RUNTIME, "unexpected %s: %s" % (type(exc).__name__, exc)))
        return EXIT_RUNTIME


def report(exc: Failure) -> None:
    sys.stderr.write("edgepack_run: error: %s\n" % exc.message)


def warn(message: str) -> None:
    """One line on stderr: the run goes on, but its result may not be what the user meant."""
    sys.stderr.write("edgepack_run: warning: %s\n" % message)


def run_model(args, root: str, manifest: dict, model: bytes, inputs, announce=None) -> int:
    """Everything that touches the runtime. ``announce((Interpreter, name, version))`` once it is known."""
    found = find_runtime(args.runtime)
    if announce is not None:
        announce(found)
    try:
        runner = Runner(model, manifest, threads=args.threads, found=found)
        if args.check:
            print(json.dumps({"ok": True, "init_ms": runner.init_seconds * 1000.0, **_platform_info(runner)}))
        elif args.benchmark is not None:
            print(json.dumps(cmd_benchmark(runner, args.benchmark, args.warmup, root, manifest)))
        elif args.self_test:
            result = cmd_self_test(runner, root, manifest)
            print(json.dumps(result))
            if not result["passed"]:
                bad = ["%s max_abs_err %.4g > atol %.3g" % (name, o["max_abs_err"], o["atol"])
                       for name, o in result["outputs"].items() if not o["passed"]]
                raise Failure(EXIT_SELFTEST, "self-test failed: " + "; ".join(bad))
        else:
            outputs = runner.run(inputs, raw=args.raw, chunk=max(1, args.batch))
            try:
                write_outputs(args.output, outputs)
            except OSError as exc:
                raise Failure(EXIT_USAGE, "cannot write %s: %s" % (args.output, exc.strerror or exc)) from None
        return EXIT_OK
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the runtime mis-parses can raise anything
        raise Failure(EXIT_RUNTIME, "%s %s failed while loading or running the model: %s: %s"
                      % (found[1], found[2], type(exc).__name__, exc)) from None


# --------------------------------------------------------------------------- crash containment
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def can_isolate() -> bool:
    return hasattr(os, "fork") and hasattr(os, "waitpid") and sys.platform != "darwin"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def run_isolated(work) -> int:
    """``work(announce)`` in one forked child; a signal death of the child becomes exit code 5."""
    state = {"pid": None, "received": []}
    limit_mb = memory_limit_mb()

    def forward(signum, frame):
        state["received"].append(signum)
        if state["pid"]:
            with contextlib.suppress(OSError):
                os.kill(state["pid"], signum)

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:  # e.g. nohup: stays ignored, here and in the child
                previous[signum] = signal.signal(signum, forward)
        if hasattr(signal, "SIGCHLD") and signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # else waitpid cannot
    except (ValueError, OSError):  # not the main thread: no forwarding, still contained
        pass
    mask = tuple(s for s in STOP_SIGNALS if s in previous) if hasattr(signal, "pthread_sigmask") else ()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        read_end, write_end = os.pipe()
        if mask:  # no stop signal between fork and the child's own handlers: it is held until then
            signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        try:
            import warnings
            with warnings.catch_warnings():  # Python 3.12+ warns when numpy's BLAS threads exist
                warnings.simplefilter("ignore", DeprecationWarning)
                parent = os.getpid()
                pid = os.fork()
        except OSError:
            if mask:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
            os.close(read_end)
            os.close(write_end)
            _restore(previous)
            previous = {}
            return work()
        if pid == 0:  # the child: never returns
            _child(work, read_end, write_end, previous, mask, parent, limit_mb)
        state["pid"] = pid
        for signum in state["received"]:  # arrived before the fork
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        if mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)
        os.close(write_end)
        label = b""
        try:
            while True:
                chunk = os.read(read_end, 512)
                if not chunk:
                    break
                label += chunk
        finally:
            os.close(read_end)
        _, status = os.waitpid(pid, 0)
    finally:
        _restore(previous)
    if not os.WIFSIGNALED(status):
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else EXIT_RUNTIME
        if code in (EXIT_OK, EXIT_USAGE, EXIT_INTEGRITY, EXIT_NO_RUNTIME, EXIT_RUNTIME, EXIT_SELFTEST):
            return code
        # a native library ended the child itself (e.g. OpenBLAS's exit(1) when an allocation fails)
        runtime = label.decode("utf-8", "replace").strip() or "the TFLite runtime or numpy"
        cause = ("; the memory limit is %d MiB (%s), which a failed allocation may have hit" % (limit_mb, MEMORY_ENV)
                 if limit_mb else "")
        report(Failure(EXIT_RUNTIME, "%s ended the process with exit code %d while loading or running the model%s"
                       % (runtime, code, cause)))
        return EXIT_RUNTIME
    signum = os.WTERMSIG(status)
    if state["received"]:  # we were asked to stop: die of the same signal, as without the child
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        signal.signal(state["received"][0], signal.SIG_DFL)
        os.kill(os.getpid(), state["received"][0])
        return 128 + state["received"][0]  # only where the signal did not end us
    runtime = label.decode("utf-8", "replace").strip() or "the TFLite runtime"
    hint = "; killed from outside, possibly for lack of memory" if signum == getattr(signal, "SIGKILL", -1) else ""
    if limit_mb and signum in (getattr(signal, "SIGABRT", -1), getattr(signal, "SIGSEGV", -1),
                               getattr(signal, "SIGBUS", -1)):
        hint += "; the memory limit is %d MiB (%s), which a failed allocation may have hit" % (limit_mb, MEMORY_ENV)
    report(Failure(EXIT_RUNTIME, "%s crashed (signal %d: %s) while loading or running the model%s"
                   % (runtime, signum, _signal_name(signum), hint)))
    return EXIT_RUNTIME


def _looks_like_oom(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("memoryerror", "bad_alloc", "out of memory", "failed to allocate",
                                   "cannot allocate", "unable to allocate", "failed to map segment",
                                   "errno 12", "memory allocation"))


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _die_with_parent(parent: int) -> None:
    """Linux/Android: SIGKILL this child when the parent dies (e.g. a supervisor's SIGKILL on a timeout)."""
    if not sys.platform.startswith(("linux", "android")):
        return
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort: no libc symbol, no ctypes
        return
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(EXIT_RUNTIME)


def memory_limit_mb():
    """The EDGEPACK_RUNTIME_MEMORY_MB limit as an int, None when unset/0; a bad value is exit 2."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw or raw == "0":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 16:
        raise Failure(EXIT_USAGE, "%s=%r is not a number of MiB >= 16 (0 = no limit)" % (MEMORY_ENV, raw))
    return value


def _limit_memory(limit_mb) -> None:
    """RLIMIT_AS for this (child) process: a model that would allocate more fails here, not the device."""
    if limit_mb is None:
        return
    try:
        import resource
        limit = limit_mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def _memory_failure(limit_mb, detail: str) -> Failure:
    return Failure(EXIT_RUNTIME, "out of memory under the %d MiB limit (%s; raise it if the model really needs more): %s"
                   % (limit_mb, MEMORY_ENV, detail))


def _child(work, read_end: int, write_end: int, previous: dict, mask: tuple, parent: int, limit_mb=None) -> None:
    code = EXIT_RUNTIME
    try:
        os.close(read_end)
        _die_with_parent(parent)
        _limit_memory(limit_mb)
        for signum, handler in previous.items():  # die of a stop signal at once, even inside a native invoke
            signal.signal(signum, signal.SIG_DFL if signum in STOP_SIGNALS else handler)
        if mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)

        def announce(found):
            os.write(write_end, ("%s %s" % (found[1], found[2])).encode("utf-8")[:500])
            os.close(write_end)

        code = work(announce)
    except MemoryError as exc:
        code = EXIT_RUNTIME
        with contextlib.suppress(BaseException):
            report(_memory_failure(limit_mb, "MemoryError %s" % (exc or "")) if limit_mb else
                   Failure(EXIT_RUNTIME, "out of memory: MemoryError %s" % (exc or "")))
    except Failure as exc:
        if limit_mb and exc.code in (EXIT_USAGE, EXIT_RUNTIME, EXIT_NO_RUNTIME) and _looks_like_oom(exc.message):
            exc = _memory_failure(limit_mb, exc.message)
        report(exc)
        code = exc.code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    except BaseException as exc:  # noqa: BLE001 - the child must end in os._exit whatever happens
        code = EXIT_RUNTIME
        with contextlib.suppress(BaseException):
            failure = Failure(EXIT_RUNTIME, "unexpected %s: %s" % (type(exc).__name__, exc))
            if limit_mb and _looks_like_oom(failure.message):
                failure = _memory_failure(limit_mb, failure.message)
            report(failure)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):  # e.g. a closed pipe; the exit code still counts
                stream.flush()
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else EXIT_RUNTIME)


if __name__ == "__main__":
    sys.exit(main())
