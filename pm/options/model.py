"""What the parser deals in: one option of the table (:class:`Opt`), its kinds and
help groups; one program of the job with its own options (:class:`Section`); a command
line, checked (:class:`Parsed`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from pm.options.checks import Check


FLAG, VALUE, PAIR, COUNT, ACTION, FILE, EXPORT = range(7)


class Opt:
    """One option: its spellings, where its value goes, how it is checked, and its help."""

    __slots__ = ("check", "const", "group", "help", "key", "kind", "local", "metavar", "names",
                 "quick")

    def __init__(self, names: str, key: str, check: Check | None = None, *, kind: int = VALUE,
                 const: object = True, metavar: str = "", help: str = "", group: str = "",
                 quick: bool = False, local: bool = False) -> None:
        self.names = tuple(names.split())
        self.key = key
        self.check = check
        self.kind = kind
        self.const = const
        self.metavar = metavar
        self.help = help
        self.group = group
        #: The quick path runs a job with this option (one node, nothing asyncio needs).
        self.quick = quick
        #: Belongs to one program of an MPMD job (Hydra's "local" options), not the job.
        self.local = local


PLACE = "Process placement"
ENV = "Environment"
IO = "Input and output"
LAUNCH = "Launch: how agents start on hosts"
TREE = "The agent tree and start-up analysis"
MEMORY = "Memory and task ensembles"
MISC = "Other"
GROUPS = (PLACE, ENV, IO, LAUNCH, TREE, MEMORY, MISC)


class Section:
    """One program of the job (an MPMD section) and its own options."""

    __slots__ = ("argv", "values")

    def __init__(self) -> None:
        self.argv: list[str] = []
        #: key -> value of the section's options (``env`` is a dict).
        self.values: dict[str, object] = {}


class Parsed:
    """A command line, checked: the job-wide values, the sections, and what was used."""

    __slots__ = ("action", "bundles", "dirs", "here", "sections", "spans", "used", "values",
                 "verbose", "words")

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.sections: list[Section] = []
        #: The options given, each with its first spelling on the command line (a refusal
        #: names an option as the user wrote it); :func:`pm.options.parser.quick_ok` looks at them.
        self.used: dict[Opt, str] = {}
        self.verbose = 0
        #: "help", "version" or "info" when one was asked for (nothing else is checked then).
        self.action = ""
        #: The one host of -hosts or -f when it is this machine, and its slots, as
        #: :func:`pm.options.parser.quick_ok` found it
        #: (:func:`pm.options.parser.this_machine_alone`).
        self.here: tuple[str, int | None] | None = None
        #: The command line's words (short options written together apart, a -configfile's
        #: words at the end) and where each option is in it: (key, start, end) -- what
        #: ``--onall`` hands on to a run per host, less its own options.
        self.words: list[str] = []
        self.spans: list[tuple[str, int, int]] = []
        #: Each option that came of short options written together, and their word.
        self.bundles: dict[str, str] = {}
        #: The ranks' directories as given (-wdir, --path, --prefix), each with its
        #: option's spelling: checked once the job's hosts are known
        #: (:func:`pm.options.parser._ranks_directories`).
        self.dirs: list[tuple[str, str]] = []
