"""What users get from pip: one version everywhere, the installed copy imported (not the
source tree's), the metadata of the package page, typing files shipped, and an import
that needs nothing optional.

``scripts/test-python`` and ``scripts/test-wheels`` run the suite against an installed
wheel and set ``FERROLOOP_EXPECT_INSTALLED`` to that virtualenv: then ``ferroloop`` must be
the copy in its site-packages, installed from a wheel (not an editable ``maturin
develop``), or the suite would be testing something users never get.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT, import_ferroloop

ROOT = Path(__file__).resolve().parent.parent
EXPECT_INSTALLED = os.environ.get("FERROLOOP_EXPECT_INSTALLED")


def cargo_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


def test_version_has_one_source():
    """Cargo.toml's version is the package's (maturin reads it) and the module's."""
    ferroloop = import_ferroloop()
    assert ferroloop.__version__ == cargo_version()
    assert importlib.metadata.version("ferroloop") == cargo_version()
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert "version" not in project and project["dynamic"] == ["version"]


def test_imported_copy():
    """Where ``ferroloop`` comes from: printed, and checked against what the run expects."""
    ferroloop = import_ferroloop()
    location = Path(ferroloop.__file__).resolve()
    print(f"ferroloop.__file__ = {ferroloop.__file__}")
    source_tree = ROOT / "python" / "ferroloop"
    if not EXPECT_INSTALLED:
        # A developer's run: maturin develop's source tree or an installed copy.
        assert location.parent == source_tree or location.is_relative_to(sys.prefix)
        return
    site = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
    assert Path(sys.prefix).resolve() == Path(EXPECT_INSTALLED).resolve()
    assert location.parent.parent in site, location
    assert not location.is_relative_to(ROOT / "python")
    dist = importlib.metadata.distribution("ferroloop")
    direct_url = dist.read_text("direct_url.json")
    if direct_url:  # pip writes it for a file it was given; editable installs say so
        assert not json.loads(direct_url).get("dir_info", {}).get("editable"), direct_url
    # The extension is the installed one too, for this interpreter's ABI.
    native = Path(ferroloop._ferroloop.__file__).resolve()
    assert native.parent == location.parent
    assert native.name.endswith(sysconfig.get_config_var("EXT_SUFFIX"))


@pytest.mark.skipif(not EXPECT_INSTALLED, reason="checks an installed wheel's metadata")
def test_installed_metadata():
    """The package page's facts, as the installed wheel carries them."""
    meta = importlib.metadata.metadata("ferroloop")
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT OR Apache-2.0"
    pythons = sorted(
        c.rsplit(":: ", 1)[1]
        for c in meta.get_all("Classifier")
        if c.startswith("Programming Language :: Python :: 3.")
    )
    assert pythons == ["3.11", "3.12", "3.13", "3.14", "3.15"]
    assert meta.get_all("Project-URL")
    assert "bench" in meta.get_all("Provides-Extra")
    files = {str(f) for f in importlib.metadata.distribution("ferroloop").files}
    licenses = {f for f in files if "/licenses/" in f}
    assert {Path(f).name for f in licenses} == {"LICENSE-MIT", "LICENSE-APACHE"}


def test_typing_files_next_to_the_module():
    """PEP 561: ``py.typed`` and the native module's stubs ship with the package."""
    package = Path(import_ferroloop().__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_ferroloop.pyi").is_file()


def test_import_needs_nothing_optional():
    """Importing ferroloop loads neither matplotlib (the `bench` extra) nor the web
    servers its optional worker class is for."""
    code = (
        "import sys, ferroloop\n"
        "loaded = sorted(m for m in ('matplotlib', 'gunicorn', 'uvicorn', 'uvicorn_worker')"
        " if m in sys.modules)\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=True,
    )
    assert out.stdout.strip() == "[]"
