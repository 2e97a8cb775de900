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

# The modules `packager.targets` and `packager.recipes` share their names with API functions.
# Importing them first means a later import cannot rebind the package attributes to the modules;
# the functions below are what `packager.targets` / `packager.recipes` are.
from . import recipes as _recipes_module, targets as _targets_module  # noqa: E402,F401


def inspect(path):
    """Describe a bundle directory or archive, or a .tflite file: see :func:`packager.api.inspect`."""
    from .api import inspect as run
    return run(path)


def targets():
    """The target profiles by name (``targets/*.toml`` and ``$EDGEPACK_TARGETS_PATH``)."""
    from .targets import list_targets
    return list_targets()


def recipes():
    """The quantization recipes by name (``packager/recipes.toml``)."""
    from .recipes import list_recipes
    return list_recipes()


def __getattr__(name):  # lazy: importing packager must not import TensorFlow (or the api's imports)
    if name in ("build", "verify", "build_sweep", "BuildResult", "VerifyReport"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["build", "verify", "inspect", "targets", "recipes", "EdgepackError", "__version__"]
