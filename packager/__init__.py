"""edgepack host side: load a TensorFlow model, convert and quantize it, bundle it for a target,
verify it in the target's own runtime, deploy it. The only package that imports TensorFlow.

Library API (returns values, raises :class:`EdgepackError`, never prints)::

    from packager import build, verify, inspect, targets
    result = build("model.h5", target="rpi", recipe="int8", calibration="samples.npz", output="dist/m")
"""
__version__ = "0.1.0"

from .errors import EdgepackError  # noqa: E402


def __getattr__(name):  # lazy: importing packager must not import TensorFlow
    if name in ("build", "verify", "inspect", "targets", "recipes", "BuildResult", "VerifyReport"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["build", "verify", "inspect", "targets", "recipes", "EdgepackError", "__version__"]
