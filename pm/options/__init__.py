"""pmrun's command line options: one table, one parser, one way to refuse a bad value.

Both of pmrun's paths read the command line through :func:`parse`: the quick
path (:mod:`pm.quick`, which runs before asyncio is imported) and the full
one (:mod:`pm.cli`, which turns the result into a JobSpec).  :func:`quick_ok`
says whether the quick path may run the job; a bad value is refused here,
before either path starts anything, with one line (``pmrun: ...``) and exit
status 2 (:func:`refuse`).  ``pmrun --help`` is written from the same table.

The modules, from the bottom up: the value checkers (:mod:`~pm.options.checks`,
:mod:`~pm.options.checks_placement`, :mod:`~pm.options.checks_env_io`); what an
option is (:mod:`~pm.options.model`); the table (:mod:`~pm.options.table`, with task
ensembles' options and their checkers in :mod:`~pm.options.task_options`); the
parser (:mod:`~pm.options.parser`), which makes GNU parallel's forms
(:mod:`~pm.options.task_forms`) and other launchers' spellings
(:mod:`~pm.options.compat`) pmrun's own.  Imported when they are needed:
:mod:`~pm.options.option_files` (-configfile, --multi-prog) and
:mod:`~pm.options.help` (``pmrun --help``).  This module gives the names the rest of
pmrun uses.

Kept free of heavy imports (no dataclasses, typing or re at import time):
checkers that need more import it when the option is used.
"""

from __future__ import annotations

from pm.options.checks import (
    EXIT_INTERNAL,
    EXIT_MISSING,
    EXIT_USAGE,
    MOST_LOCAL_NODES,
    MOST_RANKS,
    choice,
    directory,
    env_name,
    file_text,
    internal_error,
    refuse,
    verbatim,
    writable_file,
)
from pm.options.checks_env_io import (
    out_pattern,
    output_from,
    prepend_of,
    prepend_pattern,
    prepend_prefix,
    propagate_list,
)
from pm.options.checks_placement import (
    bind_to,
    cpu_bind_of,
    mem_bind,
    memory_kinds,
    slurm_distribution,
)
from pm.options.model import COUNT, FLAG, GROUPS, Opt, Parsed, Section
from pm.options.parser import log_level, parse, quick_ok
from pm.options.table import OPTIONS
from pm.options.task_forms import separators, source_words
from pm.options.task_options import (
    JOBS_FORMS,
    cpu_rule,
    jobs_value,
    limit_command,
    load_rule,
    parse_jobs,
    size,
    term_sequence,
)

__all__ = [
    "COUNT",
    "EXIT_INTERNAL",
    "EXIT_MISSING",
    "EXIT_USAGE",
    "FLAG",
    "GROUPS",
    "JOBS_FORMS",
    "MOST_LOCAL_NODES",
    "MOST_RANKS",
    "OPTIONS",
    "Opt",
    "Parsed",
    "Section",
    "bind_to",
    "choice",
    "cpu_bind_of",
    "cpu_rule",
    "directory",
    "env_name",
    "file_text",
    "internal_error",
    "jobs_value",
    "limit_command",
    "load_rule",
    "log_level",
    "mem_bind",
    "memory_kinds",
    "out_pattern",
    "output_from",
    "parse",
    "parse_jobs",
    "prepend_of",
    "prepend_pattern",
    "prepend_prefix",
    "propagate_list",
    "quick_ok",
    "refuse",
    "separators",
    "size",
    "slurm_distribution",
    "source_words",
    "term_sequence",
    "verbatim",
    "writable_file",
]
