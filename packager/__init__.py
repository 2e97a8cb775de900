"""edgepack host side: load a TensorFlow model, convert and quantize it, bundle it for a target,
verify it in the target's own runtime, deploy it. The only package that imports TensorFlow.

Library API (returns values, raises :class:`EdgepackError`, never prints; works from a plain
script, no ``if __name__ == "__main__"`` guard needed)::

    from packager import build, verify, inspect, targets
    result = build("model.h5", target="rpi", recipe="int8", calibration="samples.npz", output="dist/m")
    report = verify(result, reference="model.h5", data="eval.npz")   # a BuildResult is its bundle directory
"""
from .errors import EdgepackError  # noqa: E402
from .version import __version__  # noqa: E402

# The module `packager.targets` shares its name with an API function. Importing it first means a
# later import cannot rebind the package attribute to the module; the function below is what
# `packager.targets` is.
from . import targets as _targets_module  # noqa: E402,F401


def inspect(path):
    """Describe a bundle directory or archive, or a .tflite file: see :func:`packager.api.inspect`."""
    from .api import inspect as run
    return run(path)


def targets():
    """The target profiles by name (``targets/*.toml`` and ``$EDGEPACK_TARGETS_PATH``)."""
    from .targets import list_targets
    return list_targets()


def __getattr__(name):  # lazy: importing packager must not import TensorFlow (or the api's imports)
    if name in ("build", "verify", "recipes", "BuildResult", "VerifyReport"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["build", "verify", "inspect", "targets", "recipes", "EdgepackError", "__version__"]
