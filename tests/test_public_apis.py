"""identity/ uses libraries (the standard library too) through their public names only.

A private name (`_x`) or a name-mangled one (`_Class__x`) of a library can change or vanish in any
release, silently. The scan reads the package's source with ast: a private name is allowed only
where identity/ itself defines it, and never in a class built on a library's class, where it
could override or read that class's own. Dunder names (`__name__`) are public.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "identity"
MANGLED = re.compile(r"^_[A-Za-z0-9]+__\w+")
# Methods a library documents as the ones to override: marshmallow's "Custom Fields" page makes a
# field by subclassing Field and implementing _serialize and/or _deserialize.
DOCUMENTED_OVERRIDES = frozenset({"_serialize", "_deserialize"})


def private(name):
    """Whether name is private: a leading underscore, and not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def ours(module):
    """Whether an imported module is this package (or a relative import)."""
    return module is None or module == "identity" or module.startswith("identity.")


def trees(package):
    """{path: parsed module} for every Python file of package."""
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(package.rglob("*.py"))}


def own_classes(tree):
    """The classes a module defines on no base but object or its own such classes."""
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    own = set()
    while True:
        more = {
            cls.name
            for cls in classes
            if all(isinstance(base, ast.Name) and base.id in own | {"object"} for base in cls.bases)
        }
        if more == own:
            return own
        own = more


def outside_foreign_classes(node, own):
    """node and the nodes under it, but for the bodies of classes built on a library's class."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not (isinstance(child, ast.ClassDef) and child.name not in own):
            yield from outside_foreign_classes(child, own)


def defined_names(tree, own):
    """Names this module defines outside classes built on a library's: functions, classes, arguments,
    assigned names, and attributes its own classes assign on self or cls."""
    names = set()
    for node in outside_foreign_classes(tree, own):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and on_self(node):
            names.add(node.attr)
    return names


def on_self(attribute):
    """Whether an attribute is one of self's or cls's."""
    return isinstance(attribute.value, ast.Name) and attribute.value.id in {"self", "cls"}


def foreign_class_privates(tree, own):
    """(line, name) of private names a class built on a library's class defines or assigns."""
    found = []
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name not in own):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and private(node.name):
                if node.name not in DOCUMENTED_OVERRIDES:
                    found.append((node.lineno, node.name))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and private(node.attr):
                found.append((node.lineno, node.attr))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and private(node.id):
                found.append((node.lineno, node.id))
    return found


def private_imports(tree):
    """(line, name) of private modules or names imported from a library."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if any(map(private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not ours(node.module):
            if any(map(private, node.module.split("."))):
                found.append((node.lineno, node.module))
            found += [(node.lineno, a.name) for a in node.names if private(a.name)]
    return found


def private_uses(tree, allowed):
    """(line, name) of private attributes read or written, or named in getattr/setattr/hasattr, that
    identity/ does not define; and every name-mangled identifier."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in allowed:
            found.append((node.lineno, node.attr))
        elif (name := attribute_named(node)) is not None and private(name):
            found.append((node.lineno, name))
        identifier = getattr(node, "attr", None) or getattr(node, "id", None) or getattr(node, "name", None)
        if isinstance(identifier, str) and MANGLED.match(identifier) and not identifier.endswith("__"):
            found.append((node.lineno, identifier))
    return found


def attribute_named(node):
    """The attribute name a getattr/setattr/hasattr/delattr call spells out as a string, else None."""
    is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) > 1
    if is_call and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}:
        name = node.args[1]
        return name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else None
    return None


def library_privates(package):
    """Every use of a library's private name in package, as "file:line name"."""
    parsed = trees(package)
    owns = {path: own_classes(tree) for path, tree in parsed.items()}
    allowed = set().union(*(defined_names(tree, owns[path]) for path, tree in parsed.items()))
    found = []
    for path, tree in parsed.items():
        uses = private_imports(tree) + foreign_class_privates(tree, owns[path]) + private_uses(tree, allowed)
        found += [f"{path.relative_to(package.parent)}:{line} {name}" for line, name in sorted(set(uses))]
    return found


def test_identity_uses_no_private_name_of_a_library():
    assert library_privates(PACKAGE) == []


FOREIGN_SUBCLASS = """
from limits.storage import MemoryStorage

class Counts(MemoryStorage):
    def _sweep(self):
        pass
"""
FOREIGN_STATE = """
from flask_limiter import Limiter

class OneLimit(Limiter):
    def check(self):
        self._limiter = None
"""
FOREIGN_HOOK_CALL = """
from marshmallow import fields

class Email(fields.Field):
    def bind(self):
        self._bind_to_schema()
"""
OWN_NAMES = """
from marshmallow import fields

_cache = {}


class Own:
    def __init__(self):
        self._count = 0

    def count(self):
        return self._count, __name__


class Email(fields.Field):
    def _deserialize(self, value, *args, **kwargs):
        return value


def read(_unused=None):
    return _cache, Own()._count, Own.__dict__
"""


@pytest.mark.parametrize(
    "source, name",
    [
        ("import logging\nlogging._srcfile = None\n", "_srcfile"),
        ("from flask import request\nrequest._get_current_object()\n", "_get_current_object"),
        ("from limits._storage_scheme import SCHEMES\n", "limits._storage_scheme"),
        (FOREIGN_SUBCLASS, "_sweep"),
        (FOREIGN_STATE, "_limiter"),
        (FOREIGN_HOOK_CALL, "_bind_to_schema"),
        (
            "class M:\n    def f(self):\n        self._MemoryStorage__expire_events()\n",
            "_MemoryStorage__expire_events",
        ),
        ("class M:\n    def _M__f(self):\n        pass\n", "_M__f"),
        ("import os\ngetattr(os, '_exit')\n", "_exit"),
    ],
)
def test_the_scan_finds_each_kind_of_private_use(tmp_path, source, name):
    package = tmp_path / "identity"
    package.mkdir()
    (package / "module.py").write_text(source)
    assert [finding.rpartition(" ")[2] for finding in library_privates(package)] == [name]


def test_the_scan_allows_dunders_our_own_private_names_and_documented_overrides(tmp_path):
    package = tmp_path / "identity"
    package.mkdir()
    (package / "module.py").write_text(OWN_NAMES)
    assert library_privates(package) == []
