"""The type stubs of the native module list exactly what the module defines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import import_ferroloop

STUB = Path(__file__).resolve().parent.parent / "python" / "ferroloop" / "_ferroloop.pyi"


def stub_classes() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            names |= {
                a.target.id
                for a in node.body
                if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
            }
            classes[node.name] = names
    return classes


@pytest.mark.parametrize("name", sorted(stub_classes()))
def test_stub_matches_native_class(name):
    native_module = import_ferroloop()._ferroloop
    native = getattr(native_module, name)
    stub = stub_classes()[name]
    assert sorted(n for n in stub if not hasattr(native, n)) == []
    inherited = {n for base in native.__mro__[1:] for n in vars(base)}
    own = {n for n in vars(native) if not n.startswith("__") and n not in inherited}
    assert sorted(own - stub) == []
