"""The one tensor type: a model input or output wherever edgepack meets it.

- as the original model declares it (loading): name, shape, dtype, and ``domain`` when the model
  declares its valid values (an Embedding's vocabulary for integer ids); no index, no quantization;
- in a ``.tflite`` (inspection) and in ``manifest.json``: also the TFLite tensor ``index`` and, when
  quantized, ``scale``/``zero_point`` (real value = scale * (q - zero_point)).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from .contain.wire import plain_data


@plain_data
@dataclass(frozen=True)
class Tensor:
    """``shape``: -1 for an unknown dimension (batch, variable length); ``dtype``: a numpy dtype name
    (``float32``, ``int8``); ``index``: TFLite tensor index (None before conversion); ``scale``,
    ``zero_point``: the affine quantization of a quantized tensor, else None; ``domain``: half-open
    ``(low, high)`` of valid values when the model declares one."""
    name: str
    shape: tuple
    dtype: str
    index: int | None = None
    scale: float | None = None
    zero_point: int | None = None
    domain: tuple | None = None

    @property
    def quantized(self) -> bool:
        """True when the tensor has an affine quantization (``scale`` is set)."""
        return self.scale is not None

    @property
    def quantization(self) -> dict | None:
        """``{"scale", "zero_point"}`` of a quantized tensor (manifest.json's form), else None."""
        return {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None

    @property
    def variable_axes(self) -> list[int]:
        """Axes other than the batch whose length the model leaves open (-1)."""
        return [i for i, d in enumerate(self.shape) if i > 0 and d == -1]

    def to_json(self) -> dict:
        """manifest.json's form for a TFLite tensor (``name``, ``index``, ``shape``, ``dtype``,
        ``quantization``); a tensor of the original model has no index or quantization, and gives
        ``domain`` when it has one."""
        data = {"name": self.name}
        if self.index is not None:
            data["index"] = self.index
        data.update(shape=list(self.shape), dtype=self.dtype)
        if self.index is not None:
            data["quantization"] = self.quantization
        if self.domain is not None:
            data["domain"] = list(self.domain)
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "Tensor":
        """The inverse of :meth:`to_json`. Raises KeyError/TypeError/ValueError on malformed data."""
        q = data.get("quantization") or {}
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]),
                   int(data["index"]) if data.get("index") is not None else None,
                   float(q["scale"]) if q else None, int(q["zero_point"]) if q else None,
                   tuple(data["domain"]) if data.get("domain") else None)
