"""Calibration / verification data: .npz, .npy, or a folder of images, checked against the
model's input spec before use.

Images: sorted by file name, at most ``MAX_IMAGES``; decoded, converted to the model's channel
count (1 = grayscale, 3 = RGB), resized to the input's H x W (bilinear) and scaled to [0, 1]
(pixel / 255), the preprocessing of the tutorial this project grew from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..lazynp import np

from ..errors import UsageError
from ..tensor import Tensor
from ..contain.wire import plain_data

RECOMMENDED = (100, 500)
MAX_IMAGES = 500
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


# What a verdict rests on, strongest first. ``held-out``: --data the model was not calibrated on;
# ``calibration``: the calibration set (not held out); ``samples``: the bundle's own samples;
# ``synthetic``: seeded random inputs shaped like the model's.
EVIDENCE = ("held-out", "calibration", "samples", "synthetic")
WEAK_EVIDENCE = ("calibration", "samples", "synthetic")
# Lengths synthetic inputs get on variable-length axes: verification covers more than one.
SYNTHETIC_LENGTHS = (8, 3, 17)


@plain_data
@dataclass
class Dataset:
    """Inputs keyed by input name (first axis = samples), optional ``labels`` ({None: ``y``, output name:
    ``y_NAME``}, arrays as given: classes, one-hot, 0/1 tags, pixel classes, ids), where they
    came from (``source``: a file name or "synthetic (seed 0)") and what kind of evidence they
    are (``evidence``: one of :data:`EVIDENCE`). ``variants`` hold the same kind of inputs at other
    lengths of a variable-length axis; verification runs every group."""
    inputs: dict
    labels: dict | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    evidence: str = "held-out"
    variants: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of samples: the first axis of the first input (main group only, not ``variants``)."""
        return next(iter(self.inputs.values())).shape[0]

    @property
    def groups(self) -> list[dict]:
        """The main inputs, then each variant."""
        return [self.inputs] + list(self.variants)

    def head(self, n: int) -> "Dataset":
        """The first ``n`` samples of the inputs, the labels and each variant; source, evidence, warnings and notes
        kept (the same lists)."""
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else {k: v[:n] for k, v in self.labels.items()}, self.source, self.warnings, self.evidence,
                       [{k: v[:n] for k, v in g.items()} for g in self.variants], self.notes)

    def describe(self) -> str:
        """``held-out: eval.npz, n=100`` / ``synthetic: seed 0, n=192, lengths 8x3/3x3/17x3``."""
        n = self.count + sum(next(iter(g.values())).shape[0] for g in self.variants)
        lengths = ""
        if self.variants:
            lengths = ", lengths " + "/".join(str(_length(g)) for g in self.groups)
        return f"{self.evidence}: {self.source}, n={n}{lengths}"


def _length(group: dict) -> str:
    a = next(iter(group.values()))
    return "x".join(str(d) for d in a.shape[1:])


def with_length_variants(ds: Dataset, specs: list[Tensor]) -> Dataset:
    """For inputs with variable-length axes, add the same samples cropped to about half their
    length, so verification sees more than one length."""
    if ds.variants or not any(s.variable_axes for s in specs):
        return ds
    cropped = {}
    for s in specs:
        a = ds.inputs[s.name]
        index = [slice(None)] * a.ndim
        for axis in s.variable_axes:
            if a.shape[axis] > 1:
                index[axis] = slice(0, max(1, a.shape[axis] // 2))
        cropped[s.name] = a[tuple(index)]
    if all(cropped[s.name].shape == ds.inputs[s.name].shape for s in specs):
        return ds
    ds.variants = [cropped]
    return ds


def _read_arrays(path: Path, specs: list[Tensor]) -> tuple[dict, dict | None]:
    from device_runtime.edgepack_run import Failure, read_inputs
    as_manifest = [{"name": s.name} for s in specs]
    try:
        arrays = read_inputs(str(path), as_manifest)
    except Failure as exc:
        raise UsageError(exc.message.replace("input file", "data file"),
                         hint="arrays keyed by input name (or one array 'x'), first axis = samples") from None
    labels = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                if key == "y" or key.startswith("y_") and key not in {s.name for s in specs}:
                    y = np.asarray(npz[key])
                    if y.dtype.kind in "biuf" and y.ndim >= 1:
                        labels[None if key == "y" else key[2:]] = y
    return arrays, labels or None


MAX_PIXELS = 50_000_000


def image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, before anything is decoded."""
    import struct
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        return struct.unpack("<HH", raw[6:10])
    if raw[:2] == b"BM" and len(raw) >= 26:
        w, h = struct.unpack("<ii", raw[18:26])
        return abs(w), abs(h)
    if raw[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(raw):
            if raw[i] != 0xFF:
                return None
            marker = raw[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", raw[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", raw[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def _read_images(folder: Path, specs: list[Tensor]) -> dict:
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise UsageError("an image folder can only calibrate a model with one NHWC image input",
                         hint="pass an .npz keyed by input name instead")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:MAX_IMAGES]
    if not files:
        raise UsageError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    _, h, w, c = specs[0].shape
    if h <= 0 or w <= 0 or c not in (1, 3):
        raise UsageError("the model's image input needs a fixed H, W and 1 or 3 channels for image folders")
    import tensorflow as tf
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        if f.stat().st_size > 64 << 20:
            raise UsageError(f"image {f.name} is larger than 64 MiB")
        raw = f.read_bytes()
        dims = image_size(raw)
        if dims is None:
            raise UsageError(f"{f.name} is not a PNG, JPEG, GIF or BMP image")
        if dims[0] * dims[1] > MAX_PIXELS:
            raise UsageError(f"image {f.name} declares {dims[0]}x{dims[1]} pixels (cap {MAX_PIXELS // 1_000_000} MP); "
                             "not decoded")
        try:
            img = tf.io.decode_image(raw, channels=c, expand_animations=False)
        except Exception:  # noqa: BLE001
            raise UsageError(f"{f.name} is not a readable image") from None
        out[i] = tf.image.resize(tf.cast(img, tf.float32), (h, w)).numpy() / 255.0
    return {specs[0].name: out}


def load_dataset(path: str | Path, specs: list[Tensor], purpose: str = "calibration") -> Dataset:
    """Read calibration or verification data (.npz keyed by input name or one array ``x``, .npy,
    or a folder of images) and check it against the model's inputs: numeric dtype, shape (first axis
    = samples), finite values, the input's domain. Raises UsageError naming the input and the fix."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{purpose} data not found: {path}")
    labels = None
    if path.is_dir():
        arrays = _read_images(path, specs)
    elif not path.is_file():  # a FIFO or device would block or never end
        raise UsageError(f"{purpose} data {path} is not a regular file or a folder of images")
    elif path.suffix in (".npz", ".npy"):
        arrays, labels = _read_arrays(path, specs)
    else:
        raise UsageError(f"{purpose} data {path.name}: unsupported file type",
                         hint="use .npz (arrays keyed by input name, optional y labels), .npy, or a folder of images")
    checked = {}
    count = None
    for spec in specs:
        a = np.asarray(arrays[spec.name])
        if a.dtype.kind not in "biuf":
            raise UsageError(f"{purpose} input {spec.name!r} has dtype {a.dtype}; numbers are needed")
        if a.ndim == len(spec.shape) - 1:
            a = a[None]
        want = list(spec.shape)
        if a.ndim != len(want) or any(wd not in (-1, gd) for wd, gd in zip(want[1:], a.shape[1:])):
            raise UsageError(f"{purpose} input {spec.name!r} has shape {list(a.shape)}; the model expects "
                             f"{['N' if d == -1 else d for d in want]} (first axis = samples)")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise UsageError(f"{purpose} input {spec.name!r} contains NaN or Inf")
        if spec.domain is not None and a.size and (a.min() < spec.domain[0] or a.max() >= spec.domain[1]):
            raise UsageError(f"{purpose} input {spec.name!r} holds values in [{a.min()}, {a.max()}]; the model "
                             f"accepts [{spec.domain[0]}, {spec.domain[1] - 1}] (its Embedding vocabulary)",
                             hint="pass ids the model was trained on")
        if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size and np.dtype(spec.dtype).kind == "f" \
                and float(np.max(np.abs(a))) > float(np.finfo(np.dtype(spec.dtype)).max):
            raise UsageError(f"{purpose} input {spec.name!r} holds values beyond the {np.dtype(spec.dtype).name} "
                             f"range (max |x| {float(np.max(np.abs(a))):.3g})",
                             hint="the model computes in float32: scale or clip the data first")
        if count is not None and a.shape[0] != count:
            raise UsageError(f"{purpose} inputs have different sample counts")
        count = a.shape[0]
        want_kind = np.dtype(spec.dtype).kind
        if want_kind in "iu" and a.dtype.kind == "f":
            if a.size and not np.array_equal(a, np.round(a)):
                raise UsageError(f"{purpose} input {spec.name!r} is {spec.dtype} (ids or indices) but the data holds "
                                 f"non-integer {a.dtype} values", hint=f"save the ids as integers: "
                                 f"np.savez(..., {spec.name}=ids.astype(np.{spec.dtype}))")
            a = a.astype(spec.dtype)        # integral floats (e.g. saved via a float array) are the same ids
        elif want_kind in "iu" and a.dtype.kind in "iub" and a.dtype != np.dtype(spec.dtype):
            info = np.iinfo(spec.dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise UsageError(f"{purpose} input {spec.name!r} holds values beyond {spec.dtype}")
            a = a.astype(spec.dtype)
        checked[spec.name] = a.astype(spec.dtype, copy=False) if want_kind == "f" else a
    if not count:
        raise UsageError(f"{purpose} data holds no samples")
    labels = {k: y for k, y in (labels or {}).items() if y.shape[0] == count} or None
    ds = Dataset(checked, labels, path.name,
                 evidence="held-out" if purpose == "verification" else "calibration")
    if purpose == "calibration" and not RECOMMENDED[0] <= count <= RECOMMENDED[1]:
        ds.warnings.append(f"{count} calibration samples; {RECOMMENDED[0]}-{RECOMMENDED[1]} representative "
                           "samples are recommended")
    return ds


def synthetic_dataset(specs: list[Tensor], count: int = 64, seed: int = 0) -> Dataset:
    """Seeded inputs shaped like the model's: floats uniform in [0, 1) (float ids, those with a domain, over it);
    integers uniform over the
    input's declared domain (an Embedding's vocabulary), else 0/1 with a note that the real range
    is unknown. Variable-length axes get several lengths (:data:`SYNTHETIC_LENGTHS`): the first as
    the main group, the others as variants. ``evidence`` is "synthetic" (weak)."""
    rng = np.random.default_rng(seed)
    notes = []
    groups = []
    variable = any(s.variable_axes for s in specs)
    for length in (SYNTHETIC_LENGTHS if variable else SYNTHETIC_LENGTHS[:1]):
        arrays = {}
        for s in specs:
            shape = [count] + [d if d > 0 else length for d in s.shape[1:]]
            kind = np.dtype(s.dtype).kind
            if kind == "f" and s.domain is not None:   # ids stored as floats (they feed an Embedding)
                arrays[s.name] = rng.integers(*s.domain, size=shape).astype(s.dtype)
            elif kind == "f":
                arrays[s.name] = rng.random(shape).astype(s.dtype)
            elif kind == "b":
                arrays[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
            else:
                lo, hi = s.domain if s.domain is not None else (0, 2)
                arrays[s.name] = rng.integers(lo, hi, size=shape).astype(s.dtype)
        groups.append(arrays)
    for s in specs:
        if np.dtype(s.dtype).kind in "iu" and s.domain is None:
            notes.append(f"integer input {s.name!r} has no declared range: synthetic values are 0 and 1 only, "
                         "which proves little for ids or indices; pass --data with real inputs")
    return Dataset(groups[0], None, f"seed {seed}", evidence="synthetic", variants=groups[1:], notes=notes)
