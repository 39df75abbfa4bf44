"""``python -m anatomist.compat script.py [args]`` / ``python -m anatomist.compat -m module [args]``.

Runs classic TransformerLens code unchanged with `transformer_lens` resolving to anatomist.
"""

from __future__ import annotations

import os
import runpy
import sys

import anatomist.compat  # noqa: F401  (installs the finder)

USAGE = "usage: python -m anatomist.compat script.py [args...] | -m module [args...]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
