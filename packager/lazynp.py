"""``np``: numpy, imported when first used. The modules an unchanged ``edgepack build`` passes through (the
library API, bundle files, the conversion key) use numpy only in functions that run later, so the no-op check
runs before numpy is imported (~0.1 s of a ~0.3 s no-op; BENCHMARKS.md, issue 23). ``from ..lazynp import np``
stands for ``import numpy as np``; an attribute, once looked up, is a plain attribute of the stand-in."""
from __future__ import annotations


class _Numpy:
    def __getattr__(self, name):
        import numpy
        value = getattr(numpy, name)
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        return "<numpy, imported when first used>"


np = _Numpy()
