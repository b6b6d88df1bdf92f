"""``pmrun --help``, written from the table (:mod:`pm.options.table`); imported when
it is asked for.
"""

from __future__ import annotations

from pm.options.model import GROUPS
from pm.options.table import OPTIONS

#: Environment variables pmrun itself reads: (name, what it means).
ENVIRONMENT = (
    ("MPIEXEC_TIMEOUT=S", "as --timeout S"),
    ("HYDRA_HOST_FILE=FILE", "as -f FILE for an MPI job given no hosts (also "
                             "I_MPI_HYDRA_HOST_FILE)"),
    ("HYDRA_LAUNCHER=NAME", "as -launcher NAME for a job given hosts; HYDRA_LAUNCHER_EXEC "
                            "as -launcher-exec; HYDRA_IFACE as -iface (HYDRA_BOOTSTRAP*, "
                            "I_MPI_HYDRA_BOOTSTRAP*, I_MPI_HYDRA_IFACE too)"),
    ("PM_QUICK=0", "start even a one-node job through the agent, not the quick path"),
    ("SLURM_JOB_ID, SLURM_JOB_NODELIST", "inside a Slurm allocation (without -hosts/-f), "
     "run on its nodes; SLURM_TASKS_PER_NODE gives their slots"),
    ("PM_CLIENT_KEY=FILE", "the key pair --agents connects with (default "
     "~/.config/pmrun/client.key)"),
    ("TMPDIR (TEMP, TMP)", "where the node's topology cache and the job's copy go"),
)


HEAD = """\
usage: pmrun [options] prog [args...] [: [options] prog2 [args...] ...]
       pmrun [options] -configfile FILE
       pmrun [options] CMD ::: ARGS... | --tasks FILE [::: ARGS...]   (as GNU parallel)

Start the ranks of a parallel job through a tree of node agents and serve them
PMI: PMI-1 and PMI-2 for unmodified MPICH and Intel MPI, PMIx for unmodified Open
MPI (see --mpi), and pmrun's own protocol for Python ranks using pm.client.
MPI_Comm_spawn grows a job.  Options spelled with one dash are Hydra's
(mpiexec); those with two are pmrun's; --opt=value works for the latter.
Options marked * belong to the program they precede.
"""

TAIL = """
Exit status: 0 if every rank exited 0; else the status of the first rank that failed
(128+N for signal N, the code given to MPI_Abort); 124 on --timeout; 2 for a command
line pmrun cannot run; 255 when pmrun itself could not run the job (a node was lost,
an agent failed to start).
Ctrl-C is forwarded to every rank; a second Ctrl-C kills the job at once. Ctrl-Z stops
every rank and pmrun; fg or bg continues them.
"""


def usage() -> str:
    """``pmrun --help``, from the table."""
    lines = [HEAD]
    for group in GROUPS:
        lines.append(f"{group}:")
        for opt in OPTIONS:
            if opt.group != group:
                continue
            left = ", ".join(opt.names) + (f" {opt.metavar}" if opt.metavar else "")
            left = ("* " if opt.local else "  ") + left
            lines.extend(_wrap(left, opt.help))
        lines.append("")
    lines.append("pmrun reads from its own environment:")
    for name, meaning in ENVIRONMENT:
        lines.extend(_wrap("  " + name, meaning))
    lines.append("  (in a rank's environment: PM_TOPOLOGY_SHARE=0 stops sharing the topology)")
    return "\n".join(lines) + "\n" + TAIL


def _wrap(left: str, help: str, width: int = 88, col: int = 30) -> list[str]:
    words = help.split()
    out: list[str] = []
    line = left + " " * (col - len(left)) if len(left) < col - 1 else left
    if len(left) >= col - 1:
        out.append(line)
        line = " " * col
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip() and len(line) > col:
            out.append(line.rstrip())
            line = " " * col
        line += ("" if line.endswith(" ") else " ") + word
    out.append(line.rstrip())
    return out
