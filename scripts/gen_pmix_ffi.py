"""Write pm/agent/_pmix_ffi.py: pm/agent/pmix.h compiled by cffi for out-of-line ABI mode.

    python scripts/gen_pmix_ffi.py [OUT]

Parsing the C declarations at run time (``ffi.cdef``) costs tens of
milliseconds of pure Python on every PMIx job's start; the out-of-line module
holds them pre-parsed, and ``ffi.dlopen`` works as in in-line ABI mode (no
compiler either way).  Run this after changing ``pmix.h``; a test checks that
the module matches the header.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "pm" / "agent" / "pmix.h"
OUT = ROOT / "pm" / "agent" / "_pmix_ffi.py"
PREAMBLE = ("# Generated from pm/agent/pmix.h by scripts/gen_pmix_ffi.py (cffi, out-of-line ABI "
            "mode): do not edit.\n# ruff: noqa\n# mypy: ignore-errors\n")


def generate() -> str:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(HEADER.read_text())
    ffi.set_source("pm.agent._pmix_ffi", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.py"
        ffi.emit_python_code(str(path))
        return PREAMBLE + path.read_text()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.write_text(generate())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
