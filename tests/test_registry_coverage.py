"""Everything registered has a test of its own (after optimum's ``test_all_models_tested``): every transport,
target, recipe, output kind and criterion, input format and conversion engine is named in some test module (a whole
string literal a test uses: an argument, a parametrize value, a dict entry, a comparison; for a criterion function
also its name). A new registration without a
test fails here, naming what lacks one."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast
TESTS = Path(__file__).resolve().parent


def _uses(source: str) -> tuple[set, set]:
    """(string literals the module ``source`` *uses* whole, identifiers). A literal counts when it is an argument or
    keyword value of a call, an element of a list/tuple/set (CLI arguments, parametrize values), a dict key or value,
    compared with something, or assigned; not a docstring, not a word inside a sentence ("failed to copy" names no
    transport ``copy``), not a path component (``tmp_path / "int8w"`` names no recipe)."""
    words, names = set(), set()
    for parent in ast.walk(ast.parse(source)):
        if isinstance(parent, ast.Name):
            names.add(parent.id)
        elif isinstance(parent, ast.Attribute):
            names.add(parent.attr)
        if isinstance(parent, ast.Call):
            used = list(parent.args) + [k.value for k in parent.keywords]
        elif isinstance(parent, (ast.List, ast.Tuple, ast.Set)):
            used = list(parent.elts)
        elif isinstance(parent, ast.Dict):
            used = [k for k in parent.keys if k is not None] + list(parent.values)
        elif isinstance(parent, ast.Compare):
            used = [parent.left] + list(parent.comparators)
        elif isinstance(parent, (ast.Assign, ast.AnnAssign)) and parent.value is not None:
            used = [parent.value]
        else:
            continue
        words.update(n.value for n in used if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return words, names


@lru_cache(maxsize=None)
def _mentions() -> tuple[frozenset, frozenset]:
    """:func:`_uses` over every test module but this one."""
    words, names = set(), set()
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name != Path(__file__).name:
            w, n = _uses(path.read_text(encoding="utf-8"))
            words |= w
            names |= n
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
    # words inside sentences, docstrings and path components are not uses (a newcomer's `copy` transport and `int8w`
    # recipe passed here because "failed to copy" and tmp_path / "int8w" were in other tests)
    used, _ = _uses('def test_x(tmp_path):\n    """Deploys with ssh."""\n    out = tmp_path / "int8w"\n'
                    '    assert "failed to copy" in run("-q", "int8", target="rpi")\n')
    assert {"int8", "rpi", "failed to copy"} <= used and not {"int8w", "ssh", "copy"} & used
