"""``python -m ferroloop SCRIPT.py [args...]`` / ``python -m ferroloop -m MODULE [args...]``.

Runs an unchanged asyncio program on ferroloop: the script runs as ``__main__`` with
ferroloop's policy installed, so every loop that ``asyncio.run``, ``asyncio.Runner`` and
``asyncio.new_event_loop`` create is a ferroloop loop.
"""

from __future__ import annotations

import os
import runpy
import sys

from . import _install_policy

USAGE = "usage: python -m ferroloop SCRIPT.py [args...] | -m MODULE [args...]"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status for usage errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    _install_policy()
    if args[0] == "-m":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    sys.argv = args
    # As `python script.py` does: the script's directory comes first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
