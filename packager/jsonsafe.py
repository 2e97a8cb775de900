"""JSON has no NaN or infinity. Everything edgepack writes as JSON (manifest.json, ``--json``) goes
through :func:`clean`, so strict parsers (jq, JavaScript's JSON.parse) read it: non-finite floats
become the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (an SNR of ``"inf"`` means identical outputs)."""
from __future__ import annotations

import math


def clean(data):
    """``data`` (dicts, lists, tuples, scalars) with every non-finite float replaced by its string."""
    if isinstance(data, float) and not math.isfinite(data):
        return "inf" if data > 0 else ("-inf" if data < 0 else "nan")
    if isinstance(data, dict):
        return {k: clean(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [clean(v) for v in data]
    return data
