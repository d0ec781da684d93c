"""The type stubs of the native module agree with it, as mypy's stubtest checks them:
every name in the module is in the stub and the reverse, with matching signatures,
``__all__``, final and disjoint-base classes. It checks the stub that ships next to the
imported module (the installed wheel's when the suite runs against one).

A second test runs stubtest on a copy of the stub with one method removed and one made
up, and expects it to fail on exactly those: the check can fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT, import_ferroloop

pytest.importorskip("mypy", reason="mypy is pinned in requirements-test.txt")

MODULE = "ferroloop._ferroloop"


def stubtest(cwd: Path, mypypath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    if mypypath is not None:
        env["MYPYPATH"] = str(mypypath)
    return subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", MODULE, "--concise"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=SUBPROCESS_TIMEOUT * 2,
    )


def shipped_stub() -> Path:
    return Path(import_ferroloop()._ferroloop.__file__).with_name("_ferroloop.pyi")


def test_stubtest_agrees(tmp_path):
    stub = shipped_stub()
    assert stub.is_file(), f"no stub next to {stub.parent}"
    # mypy writes its cache into the working directory; keep it out of the checkout.
    result = stubtest(tmp_path)
    assert result.returncode == 0, f"stubtest on {stub}:\n{result.stdout}{result.stderr}"


def test_stubtest_catches_a_stale_stub(tmp_path):
    text = shipped_stub().read_text()
    assert "    def when(self) -> float: ...\n" in text
    text = text.replace("    def when(self) -> float: ...\n", "")
    text = text.replace(
        "    def cancel(self) -> None: ...\n",
        "    def cancel(self) -> None: ...\n    def made_up(self) -> None: ...\n",
        1,
    )
    stubs = tmp_path / "stubs" / "ferroloop"
    stubs.mkdir(parents=True)
    (stubs / "__init__.pyi").write_text("")
    (stubs / "_ferroloop.pyi").write_text(text)
    result = stubtest(tmp_path, mypypath=tmp_path / "stubs")
    assert result.returncode == 1, result.stdout + result.stderr
    reported = set(re.findall(rf"^{re.escape(MODULE)}\.(\S+)", result.stdout, re.M))
    assert reported == {"TimerHandle.when", "Handle.made_up"}, result.stdout
