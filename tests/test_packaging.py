"""What a checkout ships: the licence its metadata names, the service's files where the guide
says ``pip install .`` puts them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent


def test_the_license_file_is_the_one_the_metadata_names() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "BSD-3-Clause"
    assert meta["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License\n")
    assert "Copyright (c) 2026, The pmrun authors" in text
    assert "3. Neither the name of the copyright holder" in text


def test_pip_install_puts_the_service_files_where_the_guide_says() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = tool["data-files"]
    shipped = {Path(f).name for f in data["share/pmrun/deploy"]}
    on_disk = {p.name for p in (REPO / "deploy").iterdir() if p.is_file()}
    assert shipped == on_disk  # every file of deploy/, nothing missing
    assert data["share/doc/pmrun"] == ["README.md", "LICENSE"]
    guide = (REPO / "deploy" / "README.md").read_text()
    assert "python3 -m venv /opt/pmrun && /opt/pmrun/bin/pip install ." in guide
    for name in ("pm-agent.toml", "pm-agent.service", "pm-agent-jobs.conf"):
        assert f"/opt/pmrun/share/pmrun/deploy/{name}" in guide, name
    unit = (REPO / "deploy" / "pm-agent.service").read_text()
    assert "ExecStart=/opt/pmrun/bin/pm-agent serve --config /etc/pmrun/agent.toml" in unit
    assert "Documentation=file:///opt/pmrun/share/pmrun/deploy/README.md" in unit


def test_the_hydra_habits_the_readme_promises_are_options() -> None:
    """Every option the README's "Coming from Hydra" table says carries over is one pmrun takes."""
    from pm.options import OPTIONS

    names = {n for opt in OPTIONS for n in opt.names}
    names |= {n[1:] for n in names if n.startswith("--")}  # mpirun's -tag-output
    readme = (REPO / "README.md").read_text()
    heading = "## Coming from Hydra / Open MPI / srun / GNU parallel"
    section = readme.split(heading, 1)[1].split("\n## ")[0]
    carried = section.split("And a few things differ", 1)[0]
    spans = [sp for sp in re.findall(r"`([^`]+)`", carried) if not sp.startswith("sh ")]
    claimed = {w for span in spans for w in span.split() if re.fullmatch(r"--?[a-zA-Z][\w-]*", w)}
    assert claimed >= {"-configfile", "-prepend-pattern", "-print-all-exitcodes", "-envlist",
                       "-envnone", "-envall", "-launcher", "-bootstrap", "-launcher-exec",
                       "-usize", "-iface", "-j", "--allow-run-as-root", "--oversubscribe", "-x",
                       "--mca", "--pmixmca", "-H", "--npernode", "--tag-output", "--wd"}
    from pm.options.parser import _bundled

    # (Short options written as users write them: -N1, -j2 a value attached, -kN1 a bundle.)
    written = {w for w in claimed - names
               if (w[:2] in names and w[2:].isdigit()) or _bundled(w) is not None}
    assert claimed - written <= names, sorted(claimed - written - names)
