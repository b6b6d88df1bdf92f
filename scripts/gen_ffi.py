"""Write pm/agent/_pmix_ffi.py and _hwloc_ffi.py: pmix.h and hwloc.h compiled by cffi for
out-of-line ABI mode.

    python scripts/gen_ffi.py

Parsing the C declarations at run time (``ffi.cdef``) costs tens of
milliseconds of pure Python on every start that loads the library (a PMIx
job's, a bound job's); the out-of-line modules hold them pre-parsed, and
``ffi.dlopen`` works as in in-line ABI mode (no compiler either way).  Run this
after changing a header; a test checks that the modules match the headers.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "pm" / "agent"
#: The libraries: their header and the module made from it.
LIBRARIES = {name: (AGENT / f"{name}.h", AGENT / f"_{name}_ffi.py") for name in ("pmix", "hwloc")}


def generate(name: str) -> str:
    import cffi

    header, out = LIBRARIES[name]
    ffi = cffi.FFI()
    ffi.cdef(header.read_text())
    ffi.set_source(f"pm.agent.{out.stem}", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.py"
        ffi.emit_python_code(str(path))
        return (f"# Generated from pm/agent/{header.name} by scripts/gen_ffi.py (cffi, "
                "out-of-line ABI mode): do not edit.\n# ruff: noqa\n# mypy: ignore-errors\n"
                + path.read_text())


def main() -> int:
    for name, (_, out) in LIBRARIES.items():
        out.write_text(generate(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
