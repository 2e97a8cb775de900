"""Everything registered has a test of its own (after optimum's ``test_all_models_tested``): every transport,
target, recipe, output kind and criterion, input format and conversion engine is named in some test module (a string literal a test
uses, e.g. a parametrize value or an argument, or for a criterion function its name). A new registration without a
test fails here, naming what lacks one."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast
TESTS = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _mentions() -> tuple[frozenset, frozenset]:
    """(tokens of the string literals, identifiers) of every test module but this one."""
    words, names = set(), set()
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.add(node.value)
                words.update(re.findall(r"[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9]|[A-Za-z0-9]", node.value))
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
    return frozenset(words), frozenset(names)


def _registered() -> dict[str, list[str]]:
    from packager.convert.engines import ENGINES
    from packager.criteria import COMMON, CRITERIA, KINDS
    from packager.deploy.transports import TRANSPORTS
    from packager.load.formats import FORMATS
    from packager.recipes import list_recipes
    from packager.targets import list_targets
    import packager.compare  # noqa: F401 - registers the criteria
    criteria = sorted({fn.__name__ for fn in COMMON} | {fn.__name__ for fns in CRITERIA.values() for fn in fns})
    return {"transport (packager.deploy.TRANSPORTS)": sorted(TRANSPORTS),
            "target (targets/*.toml)": sorted(list_targets()),
            "recipe (packager/recipes.toml)": sorted(list_recipes()),
            "output kind (packager.criteria.KINDS)": sorted(KINDS),
            "input format (packager.load.formats.FORMATS)": sorted(f.name for f in FORMATS),
            "conversion engine (packager.convert.engines.ENGINES)": sorted(ENGINES),
            "criterion (packager.criteria, by function name)": criteria}


@pytest.mark.parametrize("what", list(_registered()))
def test_every_registered_name_has_a_test(what):
    words, names = _mentions()
    by_name = what.startswith("criterion")
    untested = [n for n in _registered()[what] if n not in ((names | words) if by_name else words)]
    assert not untested, (f"registered {what.split(' (')[0]}(s) {untested} appear in no test under tests/: "
                          f"add a test that uses {'it' if len(untested) == 1 else 'each'} by name")


def test_the_check_sees_a_name_no_test_uses():
    words, names = _mentions()
    assert "carrier-pigeon" in words and "int8" in words and "rpi" in words
    assert "no-such-transport-" + "x" * 8 not in words
