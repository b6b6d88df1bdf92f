"""Other launchers' spellings made pmrun's own options once the command line is read:
Open MPI's (--output directives, --display, --map-by words, --tune files,
--output-filename, --prefix, --path), srun's (-u, --export, --cpu-bind, --hint,
--exclude, -c, %x in file names), Flux's (shell options, {{tags}} in file names, --env
rules) and Hydra's (its HYDRA_* variables).  :func:`pm.options.parser.parse` calls each.
"""

from __future__ import annotations

import os

from pm.options.checks import _or, _warn, choice, text
from pm.options.checks_env_io import _DISPLAY, _OUTPUT, _directives, _flux_option
from pm.options.checks_placement import _HINTS, PPR_OBJECTS, _pe_of, cpu_bind_of, iface
from pm.options.table import BY_NAME, LAUNCHERS
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pm.options.model import Parsed


def _flux_shell_option(out: Parsed) -> None:
    """Flux's ``-o cpu-affinity=per-task`` (``off``, ``on``), ``-o pmi=LIST``, ``-o
    verbose``, as pmrun's --bind-to, --mpi, -v; another Flux shell option is refused in
    one line (it was a file named ``cpu-affinity=per-task`` for the ranks' stdout)."""
    values = out.values
    given = values.get("output")
    if (not isinstance(given, str) or out.used.get(BY_NAME["-o"]) != "-o"
            or not _flux_option(given)):
        return
    del values["output"]
    name, _, value = given.partition("=")
    if name == "cpu-affinity" and value in ("per-task", "on", "off"):
        values.setdefault("bind_to", "core" if value == "per-task" else "none")
    elif name == "pmi" and value:
        values.setdefault("mpi", "pmix" if "pmix" in value.split(",") else "pmi")
    elif name == "verbose":
        out.verbose += 1
        out.used.setdefault(BY_NAME["-v"], "-o verbose")  # (as -v: the full path says it)
    else:
        raise UsageError(f"-o {given}: of Flux's shell options pmrun takes cpu-affinity="
                         "per-task|on|off, pmi=LIST and verbose (an -o pattern names files: "
                         "-o out.%t)")


def _open_mpi_output(out: Parsed) -> None:
    """Open MPI 5's ``--output`` directives and ``--display`` items as pmrun's options: a
    ``--output`` value made of directives only (``tag,timestamp``) is Open MPI's, any
    other a file pattern (srun's ``--output``, Hydra's ``-outfile-pattern``)."""
    values = out.values
    for item in str(values.pop("display", "")).lower().split(","):
        if item:
            values[_DISPLAY[item]] = True
    given = values.get("output")
    if (not isinstance(given, str) or out.used.get(BY_NAME["--output"]) != "--output"
            or not _directives(given)):
        return
    items = given.split(",")
    del values["output"]
    for item in items:
        if item in _OUTPUT:
            key, value = _OUTPUT[item]
            values.setdefault(key, value)
        elif item.startswith("dir="):
            values["output_filename"] = item[4:]
        else:
            raise UsageError(f"--output {given}: of Open MPI's directives pmrun takes tag, "
                             f"timestamp, merge-stderr-to-stdout and dir=DIR, not {item!r} "
                             f"(an --output pattern names files: --output out.%r)")


#: Hydra's (and Intel MPI's Hydra's) default host file.
_HOST_FILE_VARS = ("HYDRA_HOST_FILE", "I_MPI_HYDRA_HOST_FILE")
#: Hydra's variables for its options, which a site's MPI module may set: option key,
#: variables (the first set counts), and whether they matter to a job on this machine's
#: hosts given by an allocation (the launcher only acts on hosts given: -hosts, -f).
_HYDRA_VARS = (
    ("launcher", ("HYDRA_LAUNCHER", "HYDRA_BOOTSTRAP", "I_MPI_HYDRA_BOOTSTRAP"), False),
    ("launcher_exec", ("HYDRA_LAUNCHER_EXEC", "HYDRA_BOOTSTRAP_EXEC",
                       "I_MPI_HYDRA_BOOTSTRAP_EXEC"), False),
    ("iface", ("HYDRA_IFACE", "I_MPI_HYDRA_IFACE"), True),
)


def _hydra_variables(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Hydra's ``HYDRA_LAUNCHER``, ``HYDRA_LAUNCHER_EXEC`` and ``HYDRA_IFACE`` (and
    Intel MPI's ``I_MPI_HYDRA_*``) where the command line does not give the option, for an
    MPI job on other hosts (where they mean something), checked as the option is."""
    if {"local_nodes", "agents", "tasks", "tasks_line"} & values.keys():
        return
    given = bool({"hosts", "hostfile"} & values.keys())
    allocation = bool(environ.get("SLURM_JOB_ID") and environ.get("SLURM_JOB_NODELIST"))
    checks = {"launcher": choice(*LAUNCHERS), "launcher_exec": text, "iface": iface}
    for key, names, in_allocation in _HYDRA_VARS:
        var = next((v for v in names if environ.get(v, "").strip()), None)
        if var is None or key in values or not (given or (in_allocation and allocation)):
            continue
        value = environ[var].strip()
        if key == "launcher" and value.lower() not in LAUNCHERS:
            # (Hydra's pbs, lsf, sge...: the site's setting for its own mpiexec)
            _warn(f"{var}={value} ignored: pmrun's launchers are {_or(LAUNCHERS)}")
            continue
        values[key] = checks[key](value.lower() if key == "launcher" else value, var)


def _unbuffered(out: Parsed, environ: Mapping[str, str]) -> None:
    """srun's ``-u``: output passed on as it comes (no line to label), Python ranks told
    not to buffer theirs."""
    values = out.values
    if "unbuffered" not in values:
        return
    for opt, name in out.used.items():
        if opt.key in ("prepend", "timestamp_output"):
            raise UsageError(f"{out.used[BY_NAME['--unbuffered']]} passes output on as it "
                             f"comes, not in lines: {name} has no line to start")
    if "PYTHONUNBUFFERED" not in environ:
        genv = values.setdefault("genv", {})
        assert isinstance(genv, dict)
        genv.setdefault("PYTHONUNBUFFERED", "1")


def _cpu_unit(values: dict[str, object]) -> str:
    """What a rank's CPUs are counted in: cores, or hardware threads with Open MPI's
    ``--use-hwthread-cpus`` (a rank's own PE=N or -c N; pmrun binds nothing unasked)."""
    return "hwthread" if values.get("hwthread_cpus") else "core"


def _open_mpi_mapping(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--map-by`` words as pmrun's options: ``TARGET:PE=N`` binds N cores per
    rank (``--bind-to core:N``), ``ppr:N:node`` is ``-ppn N``, ``ppr:N:package`` (numa,
    l3cache, core, hwthread) N a package: ``-ppn`` N times the node's packages, the
    ranks mapped N to each in turn when bound (this machine's nodes only: the count needs
    the node's topology before the plan)."""
    per = values.pop("npersocket", None)
    if per is not None:  # (Open MPI 4's spelling; 5 knows only ppr:N:package)
        ppr = f"ppr:{per}:package"
        if values.setdefault("map_by", ppr) != ppr:
            raise UsageError(f"-npersocket {per} is --map-by {ppr}: --map-by "
                             f"{values['map_by']} disagrees")
    given = values.get("map_by")
    if not isinstance(given, str):
        return
    if given.lower().startswith("rankfile:"):
        values["rankfile"] = given.partition("=")[2]
        del values["map_by"]
        return
    mapped, pe = _pe_of(given)
    if pe:  # N cores per rank, bound
        values["map_by"] = mapped
        bind = str(values.get("bind_to", _cpu_unit(values)))
        if bind.lower() not in ("core", "hwthread"):
            raise UsageError(f"--map-by {mapped}:PE={pe} binds {pe} cores per rank: "
                             f"--bind-to {bind} disagrees")
        values["bind_to"] = f"{bind}:{pe}"
    if mapped.lower() == "node":
        if values.setdefault("distribution", "cyclic") != "cyclic":
            raise UsageError(f"--map-by node places ranks cyclically: --distribution "
                             f"{values['distribution']} disagrees")
        del values["map_by"]
    elif mapped.lower().startswith("ppr:"):
        _, count, per = mapped.lower().split(":")
        obj = PPR_OBJECTS[per]
        per_node = int(count) * _objects_here(obj, mapped, values, environ)
        if values.setdefault("ppn", per_node) != per_node:
            raise UsageError(f"--map-by {mapped} and -ppn {values['ppn']} disagree")
        if obj == "node":
            del values["map_by"]
        else:
            values["map_by"] = f"ppr:{count}:{obj}"


def _objects_here(obj: str, given: str, values: Mapping[str, object],
                  environ: Mapping[str, str]) -> int:
    """How many ``obj`` this machine has (1 for a node), for ``--map-by ppr:N:obj``;
    :class:`UsageError` when the job runs on other hosts (their topology is theirs)."""
    if obj == "node":
        return 1
    if {"hosts", "hostfile", "launcher", "nodes"} & values.keys() or any(
            environ.get(v) for v in ("SLURM_JOB_ID", "PBS_NODEFILE", "LSB_DJOB_HOSTFILE",
                                     "HYDRA_HOST_FILE")):  # (an allocation's other hosts)
        raise UsageError(f"--map-by {given}: pmrun counts the {obj} objects of this machine's "
                         "nodes only (other hosts' are theirs to tell); give -ppn N")
    from pm.agent.topology import discover

    topo = discover(use_hwloc=False)
    count = {"package": len(topo.packages), "numa": len(topo.numa_nodes),
             "l3cache": len(topo.l3caches), "core": len(topo.cores),
             "hwthread": len(topo.pus)}[obj]
    if not count:
        raise UsageError(f"--map-by {given}: this machine tells no {obj} objects")
    return count


#: Flux's mustache tags in a file name, as pmrun's pattern codes (``{{id.dec}}``: any
#: encoding of the id is pmrun's job id); the task's and node's are pmrun's own, beyond
#: Flux's (whose --output names one file a job).
_FLUX_TAGS = {"id": "%j", "jobid": "%j", "name": "%x", "taskid": "%t", "task.id": "%t",
              "task.rank": "%t", "node.id": "%n", "node.name": "%h"}


def _flux_templates(out: Parsed) -> None:
    """Flux's ``--output=job-{{id}}.out`` (``{{name}}``, ...): the same as pmrun's codes
    (``%j``, ``%x``, ...); a tag pmrun does not fill in a file name is refused."""
    for key in ("output", "error"):
        value = out.values.get(key)
        if isinstance(value, str) and "{{" in value:
            import re

            tags = re.split(r"\{\{([^{}]*)\}\}", value)  # (text, tag, text, ..., text)
            out.values[key] = "".join(
                _flux_code(part, f"--{key} {value}") if i % 2 else part
                for i, part in enumerate(tags))


def _flux_code(tag: str, given: str) -> str:
    """The pattern code of Flux's tag ``{{tag}}`` in ``given`` (the option and its value)."""
    base, _, encoding = tag.strip().partition(".")
    if base in ("id", "jobid") and encoding in ("f58", "dec", "hex", "dothex", "words"):
        return "%j"
    code = _FLUX_TAGS.get(tag.strip())
    if code is None:
        raise UsageError(f"{given}: {{{{{tag}}}}} is not a tag pmrun fills in a file name "
                         "({{id}}, {{name}}, {{taskid}}, {{node.id}}, {{node.name}})")
    return code


def _job_name_in_patterns(out: Parsed, environ: Mapping[str, str]) -> None:
    """srun's ``%x`` in the --output/--error patterns: the job's name (``-J``, else the
    allocation's, else the first program's, as srun names a job it allocates); in an
    allocation, ``-J``'s name is the ranks' ``SLURM_JOB_NAME``."""
    values = out.values
    if values.get("job_name") and environ.get("SLURM_JOB_ID"):
        # Inside an allocation srun's -J names the step, and its tasks see the name.
        env = values.setdefault("genv", {})
        assert isinstance(env, dict)
        env.setdefault("SLURM_JOB_NAME", str(values["job_name"]))
    patterns = [k for k in ("output", "error") if "%x" in str(values.get(k, ""))]
    if not patterns:
        return
    name = values.get("job_name") or environ.get("SLURM_JOB_NAME")
    if not name:
        argv = out.sections[0].argv if out.sections else []
        name = os.path.basename(argv[0]) if argv else "pmrun"
    from pm.common.outfiles import pattern_problem, with_job_name

    for key in patterns:
        values[key] = with_job_name(str(values[key]), str(name))
        problem = pattern_problem(f"--{key}", str(values[key]))
        if problem:
            raise UsageError(problem)


#: The options a --tune file may hold (Open MPI 4's), and the prefix of their variables.
_TUNE_OPTIONS = {"-x": "", "--mca": "OMPI_MCA_", "-mca": "OMPI_MCA_", "--gmca": "OMPI_MCA_",
                 "-gmca": "OMPI_MCA_", "--pmixmca": "PMIX_MCA_", "-pmixmca": "PMIX_MCA_"}


def _open_mpi_tune(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--tune`` files into the ranks' environment, under what the command line
    set: a ``NAME = VALUE`` line is ``--mca NAME VALUE`` (Open MPI 5's files, and 4's
    ``--am``), other lines are ``-x``, ``--mca`` and ``--pmixmca`` options (4's ``--tune``)."""
    values.pop("personality", None)
    given = values.pop("tune", None)
    if given is None:
        return
    from pm.options.option_files import _file_lines

    env = values.setdefault("genv", {})
    assert isinstance(env, dict)
    for path in str(given).split(","):
        for number, words in _file_lines(path, "--tune"):
            where = f"--tune {path}, line {number}"
            if not words[0].startswith("-"):
                name, eq, value = " ".join(words).partition("=")
                if not eq or not name.strip():
                    raise UsageError(f"{where}: NAME = VALUE, or -x, --mca and --pmixmca "
                                     "options")
                env.setdefault(f"OMPI_MCA_{name.strip()}", value.strip())
                continue
            k = 0
            while k < len(words):
                prefix = _TUNE_OPTIONS.get(words[k])
                if prefix is None or k + 1 >= len(words):
                    raise UsageError(f"{where}: {words[k]}: a --tune file holds -x, --mca and "
                                     "--pmixmca options (each with its value), or NAME = VALUE")
                if prefix:
                    if k + 2 >= len(words):
                        raise UsageError(f"{where}: {words[k]} needs KEY VALUE")
                    env.setdefault(prefix + words[k + 1], words[k + 2])
                    k += 3
                    continue
                name, eq, value = words[k + 1].partition("=")
                if eq:
                    env.setdefault(name, value)
                elif name in environ:
                    env.setdefault(name, environ[name])
                else:
                    _warn(f"{where}: -x {name}: not set in pmrun's environment, so not passed")
                k += 2


def _output_filename(out: Parsed) -> None:
    """Open MPI's ``--output-filename DIR`` as pmrun's --output and --error patterns: its
    layout, ``DIR/1/rank.R/stdout`` and ``stderr`` (one folder per rank, made as needed;
    spawned jobs' ranks as ``--output`` names them)."""
    values = out.values
    given = values.pop("output_filename", None)
    if not isinstance(given, str):
        return
    folder = given[:-len(":nocopy")] if given.endswith(":nocopy") else given
    if not folder:
        raise UsageError("--output-filename takes a folder, not ''")
    for key in ("output", "error"):
        if key in values:
            raise UsageError(f"--output-filename writes each rank's stdout and stderr: "
                             f"--{key} {values[key]} disagrees")
    base = os.path.join(folder.replace("%", "%%"), "1", "rank.%r")
    values["output"] = os.path.join(base, "stdout")
    if "merge_stderr" not in values:
        values["error"] = os.path.join(base, "stderr")
    from pm.common.outfiles import folder_in_the_way

    part = folder_in_the_way(os.path.dirname(base))
    if part:
        raise UsageError(f"--output-filename {given}: {part} is not a folder")


def _flux_env(out: Parsed, environ: Mapping[str, str]) -> None:
    """Flux's ``--env`` rules, in order, as pmrun's -genv and (once a rule removes some)
    the "only" mode of what is left of pmrun's environment (nothing of the hosts': under
    Flux a variable removed is gone)."""
    rules = out.values.pop("flux_env", None)
    if not isinstance(rules, list):
        return
    env = _FluxEnv(environ, out.values.setdefault("genv", {}))  # type: ignore[arg-type]
    for rule in rules:
        env.apply(str(rule), 0)
    if env.removed:
        if "env_mode" in out.values:
            raise UsageError("--env -PATTERN (--env-remove) and -genvall/-genvnone/-genvlist "
                             "(or srun's --export): give one")
        out.values["env_mode"] = ("only", env.names)


class _FluxEnv:
    """The ranks' environment as Flux's --env rules build it: the names of pmrun's own it
    keeps (:attr:`names`) and what is set (``genv``)."""

    def __init__(self, environ: Mapping[str, str], genv: dict[str, str]) -> None:
        self.environ = environ
        self.genv = genv
        self.names = list(environ)
        self.removed = False

    def apply(self, rule: str, depth: int) -> None:
        if rule.startswith("-"):
            self.removed = True
            match = _env_pattern(rule[1:], rule)
            self.names = [n for n in self.names if not match(n)]
            for name in [n for n in self.genv if match(n)]:
                del self.genv[name]
        elif rule.startswith("^"):
            self._file(rule, depth)
        elif "=" in rule:
            name, _, value = rule.partition("=")
            self.genv[name] = self._expand(value, rule)
        elif rule:
            match = _env_pattern(rule, rule)
            self.names += [n for n in self.environ if match(n) and n not in self.names]

    def _file(self, rule: str, depth: int) -> None:
        path = os.path.expanduser(rule[1:])
        if depth >= 8:
            raise UsageError(f"--env {rule}: rule files nested 8 deep (one reads itself?)")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = [line.strip() for line in f]
        except OSError as exc:
            raise UsageError(f"--env {rule}: {exc.strerror or exc}") from None
        for line in lines:
            self.apply(line, depth + 1)

    def _expand(self, value: str, rule: str) -> str:
        """$NAME and ${NAME} in ``value``: the ranks' value so far, else pmrun's (Flux's)."""
        if "$" not in value:
            return value
        from collections import ChainMap
        from string import Template

        built: dict[str, object] = {n: self.environ[n] for n in self.names
                                    if n in self.environ}
        here: dict[str, object] = dict(self.environ)
        try:
            return Template(value).substitute(ChainMap(dict(self.genv), built, here))
        except KeyError as exc:
            raise UsageError(f"--env {rule}: {exc.args[0]} is not set") from None
        except ValueError:
            raise UsageError(f"--env {rule}: a $ that starts no name (write $$ for "
                             "a $)") from None


def _env_pattern(pattern: str, rule: str) -> Callable[[str], bool]:
    """A name matcher for Flux's pattern: a shell pattern, or ``/REGEX/``."""
    if pattern.startswith("/"):
        import re

        try:
            regex = re.compile(pattern[1:].rstrip("/"))
        except re.error as exc:
            raise UsageError(f"--env {rule}: {exc}") from None
        return lambda name: regex.match(name) is not None
    from fnmatch import fnmatchcase

    return lambda name: fnmatchcase(name, pattern)


def _srun_export(out: Parsed) -> None:
    """srun's ``--export`` as pmrun's -genvall, or the "only" mode (the variables given
    alone, nothing of the hosts': slurmstepd gives a task what srun sends; NONE: pmrun's
    :data:`pm.jobenv.NONE_KEEPS`), and -genv."""
    given = out.values.pop("export", None)
    if not isinstance(given, str):
        return
    items = given.split(",")
    words = {item.upper() for item in items if "=" not in item}
    if "ALL" in words and "NONE" in words:
        raise UsageError(f"--export {given}: ALL and NONE disagree")
    names = [item.partition("=")[0] for item in items if item.upper() not in ("ALL", "NONE")]
    pairs = {name: value for name, eq, value in (i.partition("=") for i in items) if eq}
    if "ALL" in words:
        mode: tuple[str, list[str]] = ("all", [])
    elif "NONE" in words:
        from pm.jobenv import NONE_KEEPS

        mode = ("only", list(NONE_KEEPS))
        if names:
            raise UsageError(f"--export {given}: NONE passes no variable")
    else:
        mode = ("only", [n for n in names if n not in pairs])
    out.values["env_mode"] = mode
    genv = out.values.setdefault("genv", {})
    assert isinstance(genv, dict)
    genv.update(pairs)


def _open_mpi_paths(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--prefix DIR`` and ``--path DIR`` as the ranks' PATH and
    LD_LIBRARY_PATH (pmrun's own values of them, which the ranks get, with DIR first)."""
    prefix, path = values.pop("prefix", None), values.pop("exe_path", None)
    if prefix is None and path is None:
        return
    genv = values.setdefault("genv", {})
    assert isinstance(genv, dict)
    first = [str(d) for d in (path, None if prefix is None else f"{prefix}/bin") if d]
    rest = genv.get("PATH", environ.get("PATH", ""))
    genv["PATH"] = ":".join([*first, *([rest] if rest else [])])
    if prefix is not None:
        rest = genv.get("LD_LIBRARY_PATH", environ.get("LD_LIBRARY_PATH", ""))
        genv["LD_LIBRARY_PATH"] = ":".join([f"{prefix}/lib", *([rest] if rest else [])])


def _srun_cpu_bind(values: dict[str, object]) -> None:
    """srun's ``--cpu-bind`` as pmrun's ``--bind-to`` (and ``--report-bindings``)."""
    given = values.pop("cpu_bind", None)
    if not isinstance(given, str):
        return
    target, verbose = cpu_bind_of(given, "--cpu-bind")
    if "bind_to" not in values:
        values["bind_spelled"] = f"--cpu-bind={given}"
    if values.setdefault("bind_to", target) != target:
        raise UsageError(f"--cpu-bind {given} and --bind-to {values['bind_to']} disagree")
    if verbose:
        values["report_bindings"] = True


def _srun_hint(values: dict[str, object]) -> None:
    """srun's ``--hint`` as pmrun's binding, which --bind-to/--cpu-bind and --map-by
    given override (as srun's --cpu-bind overrides its --hint)."""
    hint = values.pop("hint", None)
    if not isinstance(hint, str):
        return
    bind, mapping = _HINTS[hint]
    values.setdefault("bind_to", bind)
    if mapping is not None:
        values.setdefault("map_by", mapping)


def _srun_exclude(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """srun's ``--exclude HOSTLIST``: the allocation's nodes but those, each with its task
    slots, as a host list (nodes of the allocation: Slurm starts the agents)."""
    given = values.pop("exclude", None)
    if given is None:
        return
    if "hosts" in values or "hostfile" in values:
        raise UsageError("--exclude leaves out nodes of the Slurm allocation: not with "
                         "-hosts, -w or -f")
    from pm.bootstrap.slurm import allocation_hosts
    from pm.common.hostlist import HostlistError, parse_hosts_option

    if not environ.get("SLURM_JOB_NODELIST"):
        raise UsageError("--exclude leaves out nodes of a Slurm allocation: this is not "
                         "inside one (no SLURM_JOB_NODELIST)")
    try:
        nodes = allocation_hosts(environ)
    except HostlistError as exc:
        raise UsageError(f"--exclude: {exc}") from None
    out = {e.host for e in parse_hosts_option(str(given))}
    kept = [(h, s) for h, s in nodes if h not in out]
    if not kept:
        raise UsageError(f"--exclude {given} leaves no node of the allocation")
    values["hosts"] = ",".join(h if s is None else f"{h}:{s}" for h, s in kept)


def _cpus_per_task(values: dict[str, object]) -> None:
    """srun's and Flux's ``-c N`` as pmrun's ``--bind-to core:N`` (``hwthread:N`` with
    ``--bind-to hwthread``): N cores a rank, bound."""
    per = values.pop("cpus_per_task", None)
    if per is None:
        return
    bind = str(values.get("bind_to", _cpu_unit(values)))
    kind, _, count = bind.partition(":")
    if kind.lower() not in ("core", "hwthread") or count not in ("", str(per)):
        raise UsageError(f"-c {per} binds each rank to {per} cores: --bind-to {bind} "
                         "disagrees")
    values["bind_to"] = f"{kind}:{per}"
