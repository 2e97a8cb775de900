"""Quantization recipes, read from ``recipes.toml`` into frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, asdict
from functools import lru_cache
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import UsageError

RECIPES_FILE = Path(__file__).with_name("recipes.toml")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    steps: float
    cosine_min: float
    top1_min: float


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    optimizations: tuple[str, ...]
    supported_types: tuple[str, ...]
    supported_ops: tuple[str, ...]
    needs_calibration: bool
    tolerance: Tolerance
    io_types: tuple[str, ...] = ("float",)

    def check_request(self, io: str, has_calibration: bool) -> None:
        """Refuse (never downgrade) an I/O type the recipe lacks or missing calibration data."""
        if self.needs_calibration and not has_calibration:
            raise UsageError(f"recipe {self.name!r} needs calibration data",
                             hint="pass --calibration samples.npz (100-500 representative inputs) or a folder of "
                                  "images, or choose --quantize dynamic/float16, which need none")
        if io not in self.io_types:
            raise UsageError(f"recipe {self.name!r} does not support --io {io}",
                             hint="choose from: " + ", ".join(self.io_types))

    def to_json(self, io: str = "float") -> dict:
        data = asdict(self)
        data["io"] = io
        return data


@lru_cache(maxsize=1)
def list_recipes() -> dict[str, Recipe]:
    data = tomllib.loads(RECIPES_FILE.read_text(encoding="utf-8"))
    return {
        name: Recipe(name=name, description=r["description"], optimizations=tuple(r["optimizations"]),
                     supported_types=tuple(r["supported_types"]), supported_ops=tuple(r["supported_ops"]),
                     needs_calibration=bool(r["needs_calibration"]), tolerance=Tolerance(**r["tolerance"]),
                     io_types=tuple(r.get("io_types", ["float"])))
        for name, r in data.items()
    }


def get_recipe(name: str) -> Recipe:
    recipes = list_recipes()
    if name not in recipes:
        raise UsageError(f"unknown recipe {name!r}", hint="choose from: " + ", ".join(recipes))
    return recipes[name]
