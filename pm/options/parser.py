"""The parser: argv to :class:`~pm.options.model.Parsed`, and whether the quick path
runs the job.

Both of pmrun's paths read the command line through :func:`parse`: the quick path
(:mod:`pm.quick`, which runs before asyncio is imported) and the full one
(:mod:`pm.cli`, which turns the result into a JobSpec).  :func:`quick_ok` says whether
the quick path may run the job.  Once the words are read, GNU parallel's forms
(:mod:`pm.options.task_forms`) and the spellings of Open MPI, srun, Flux and Hydra
(:mod:`pm.options.compat`) become pmrun's own options.
"""

from __future__ import annotations

from pm.options.checks import (
    _is_number,
    _warn,
    directory,
    file_text,
    ranks_directory,
    readable_file,
    seconds,
)
from pm.options.checks_env_io import _env_edit, propagate_list
from pm.options.checks_placement import _runs, hostfile, looks_like_distribution
from pm.options.compat import (
    _HOST_FILE_VARS,
    _cpus_per_task,
    _flux_env,
    _flux_shell_option,
    _flux_templates,
    _hydra_variables,
    _job_name_in_patterns,
    _open_mpi_mapping,
    _open_mpi_output,
    _open_mpi_paths,
    _open_mpi_tune,
    _output_filename,
    _srun_cpu_bind,
    _srun_exclude,
    _srun_export,
    _srun_hint,
    _unbuffered,
)
from pm.options.model import ACTION, COUNT, EXPORT, FILE, FLAG, PAIR, VALUE, Parsed, Section
from pm.options.table import BY_NAME
from pm.options.task_forms import (
    _SEMAPHORE_KEYS,
    _command_with_sources,
    _ensemble_only,
    _group_by,
    _not_with,
    _onall,
    _onall_words,
    _piped_command,
    _retry_failed,
    _semaphore,
    _sharded,
    _tee,
    separators,
    source_words,
)
from pm.options.task_options import LISTS
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pm.options.model import Opt


def _bcast_dest(value: str, opt: str) -> str:
    if not value:
        raise UsageError(f"{opt}= needs a path (or no =)")
    return value


def _yes_no(value: str, opt: str) -> bool:
    if value.lower() not in ("yes", "no"):
        raise UsageError(f"{opt} takes =yes, =no or nothing, not {value!r}")
    return value.lower() == "yes"


def _off(value: str, opt: str) -> None:
    if value.lower() != "off":
        raise UsageError(f"{opt} takes =off or nothing, not {value!r}")


#: srun's flags that take an optional ``=VALUE`` (the option's value from it; None: unset).
_OPTIONAL_VALUE: dict[str, Callable[[str, str], object]] = {
    "--bcast": _bcast_dest, "--send-libs": _yes_no, "--no-kill": _off,
    "--propagate": lambda value, opt: propagate_list(value, opt)}


#: srun's requests for resources: only an allocation (salloc, sbatch) grants them.
_ALLOCATION = frozenset({"-p", "--partition", "-A", "--account", "--qos", "--reservation",
                         "--constraint", "--mem", "--mem-per-cpu", "--mem-per-gpu",
                         "--gres", "--gpus", "-G", "--gpus-per-node",
                         "--exclusive", "--licenses", "--tmp", "--prefer", "--contiguous",
                         "-B", "--extra-node-info", "--sockets-per-node", "--cores-per-socket",
                         "--threads-per-core", "--mincpus", "--cpus-per-gpu",
                         "--tres-per-task", "--gpus-per-socket", "--ntasks-per-gpu",
                         "--ntasks-per-core", "--ntasks-per-socket",
                         "--gres-flags", "--switches", "--network", "--core-spec",
                         "--thread-spec", "--spread-job", "--use-min-nodes", "--clusters",
                         "-M"})
#: ... and srun's options for when and how Slurm schedules a job it allocates.
_SCHEDULING = frozenset({"--begin", "--dependency", "--deadline", "--time-min", "--hold",
                         "--immediate", "--test-only", "--priority", "--mail-type",
                         "--mail-user", "--comment", "--wckey", "--requeue", "--no-requeue",
                         "--uid", "--gid", "--jobid"})

#: Flux's options about its queue, which a job pmrun starts at once has not: refused so.
_FLUX_QUEUE = frozenset({"--urgency", "--queue", "--bank", "--begin-time", "--flags",
                         "--requires", "--setattr", "--conf", "--cc", "--bcc",
                         "--wait-event"})


def _bundled(arg: str) -> list[str] | None:
    """Short options written together as GNU parallel (getopt) takes them: flags, then
    perhaps one that takes a value, attached or next (``-kN1``: ``-k -N1``; ``-kj 2``);
    None when ``arg`` is not such a bundle."""
    out: list[str] = []
    for at, letter in enumerate(arg[1:], 1):
        opt = BY_NAME.get("-" + letter)
        if opt is None:
            return None
        if opt.kind in (FLAG, COUNT):
            out.append("-" + letter)
            continue
        if opt.kind == VALUE and out:
            return [*out, "-" + arg[at:]]
        return None
    return out if len(out) > 1 else None


def log_level(verbose: int) -> int:
    """The logging level ``-v`` given ``verbose`` times asks for: WARNING, INFO, DEBUG, or
    ERROR after ``-Q`` (as numbers: this module is read before ``logging`` is imported)."""
    return 40 if verbose < 0 else 30 if verbose == 0 else 20 if verbose == 1 else 10


def parse(argv: list[str], environ: Mapping[str, str]) -> Parsed:
    """Check a command line (without the program name); raises :class:`UsageError`."""
    out = Parsed()
    sec = Section()
    argv = list(argv)
    read_config = False
    config: list[str] = []
    i = 0
    out.words = argv
    unset: list[str] = []  # -x VAR of a variable we do not have: a warning
    at: tuple[str, int] | None = None  # the option read last: its key and first word
    while i < len(argv) or config:
        if at is not None:
            out.spans.append((*at, i))
            at = None
        if i >= len(argv):
            # The command line is read: the -configfile's programs come after its options.
            argv.extend(config)
            config = []
            continue
        arg = argv[i]
        if arg == ":":
            raise UsageError("':' must follow a program")
        ended = arg == "--"  # the end of the options (srun's, Flux's): the program follows
        if ended:
            if i + 1 >= len(argv) or argv[i + 1] == ":":
                raise UsageError("nothing after '--': give the program")
            i += 1
        if ended or not arg.startswith("-") or arg == "-":
            # The program and its arguments, up to a ':' section separator.
            j = argv.index(":", i) if ":" in argv[i:] else len(argv)
            sec.argv = argv[i:j]
            out.sections.append(sec)
            sec = Section()
            if j < len(argv) and j + 1 >= len(argv):
                raise UsageError("nothing after ':'")
            i = j + 1 if j < len(argv) else j
            continue
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = BY_NAME.get(name)
        if (name in ("-K", "--kill-on-bad-exit") and eq) or (arg[:2] == "-K" and opt is None):
            # srun's optional value: --kill-on-bad-exit=0, -K0.
            kill, name = (inline, name) if eq else (arg[2:], "-K")
            if kill not in ("0", "1"):
                raise UsageError(f"{name} takes 0 or 1, not {kill!r}")
            out.used.setdefault(BY_NAME["-K"], name)
            out.values["kill_on_bad_exit"] = kill
            at = ("kill_on_bad_exit", i)
            i += 1
            continue
        if name in _OPTIONAL_VALUE and eq:  # srun's --FLAG=VALUE of a flag
            opt = BY_NAME[name]
            out.used.setdefault(opt, name)
            value = _OPTIONAL_VALUE[name](inline, name)
            if value is None:
                out.values.pop(opt.key, None)
            else:
                out.values[opt.key] = value
            at = (opt.key, i)
            i += 1
            continue
        if (name == "-m" and i + 1 < len(argv) and looks_like_distribution(argv[i + 1])
                and source_words(out.values).isdisjoint(argv)):
            # srun's -m cyclic; beside ::: sources, GNU parallel's -m (no value) and a
            # command that happens to be called so.
            opt = BY_NAME["--distribution"]
        if opt is None and not eq and len(arg) > 2 and arg[1] != "-":
            opt = BY_NAME.get("-" + arg)  # Open MPI's -tag-output: its --tag-output
            short = BY_NAME.get(arg[:2]) if opt is None else None
            if arg[:2] == "-m" and looks_like_distribution(arg[2:]):
                short = BY_NAME["--distribution"]  # srun's -mcyclic
            if short is not None and short.kind == VALUE and _attached(short, arg):
                opt, name, eq, inline = short, arg[:2], "=", arg[2:]  # -n4, -j2: srun's
        if opt is None and not eq and len(arg) > 2 and arg[1] != "-":
            bundle = _bundled(arg)
            if bundle is not None:  # GNU parallel's (getopt's) -kN1: -k -N1
                argv[i:i + 1] = bundle
                for word in bundle:
                    out.bundles.setdefault(word[:2], arg)
                continue
        if opt is None:
            word = arg.partition("=")[0]
            if word in _ALLOCATION:
                raise UsageError(f"{word} asks Slurm for resources, which an allocation "
                                 f"grants: give it to salloc or sbatch, and run pmrun inside "
                                 "(it starts the ranks on the allocation's nodes)")
            if word in _SCHEDULING:
                raise UsageError(f"{word} is about how Slurm schedules an allocation: give "
                                 "it to salloc or sbatch, and run pmrun inside (it starts the "
                                 "ranks on the allocation's nodes)")
            if word in _FLUX_QUEUE:
                raise UsageError(f"{word} is about how Flux queues a job (flux submit, flux "
                                 "alloc): pmrun starts its job at once, on this machine or "
                                 "the hosts given")
            raise UsageError(f"unknown option {arg} (see pmrun --help)")
        if name == "--wait" and not eq and not (i + 1 < len(argv) and _is_number(argv[i + 1])):
            # GNU parallel's --wait (for a semaphore's commands), not srun's --wait SECONDS.
            out.values["sem_wait"] = True
            at = ("sem_wait", i)
            i += 1
            continue
        out.used.setdefault(opt, name)
        at = (opt.key, i)
        if opt.kind == ACTION:
            out.action = opt.key
            return out
        if opt.kind in (FLAG, COUNT):
            if eq:
                raise UsageError(f"{name} takes no value")
            if opt.kind == COUNT:
                out.verbose += -1 if opt.key == "quiet" else 1
            elif opt.key:
                (sec.values if opt.local else out.values)[opt.key] = opt.const
            i += 1
            continue
        if eq:
            raw = inline
        elif i + 1 < len(argv):
            i += 1
            raw = argv[i]
        else:
            raise UsageError(f"{name} needs {opt.metavar or 'a value'}")
        i += 1
        if opt.kind in (PAIR, EXPORT):  # NAME VALUE or NAME=VALUE; -x NAME: its value here
            var, is_one_word, val = raw.partition("=")
            if not is_one_word and opt.kind == PAIR:
                if i >= len(argv):
                    raise UsageError(f"{name} needs {opt.metavar} (or "
                                     f"{opt.metavar.replace(' ', '=')})")
                val = argv[i]
                i += 1
            if not var:
                raise UsageError(f"{name} needs a variable name, not {raw!r}")
            if not is_one_word and opt.kind == EXPORT:
                if var not in environ:  # (said once the line is read: -Q silences it)
                    unset.append(f"{name} {var}: not set in pmrun's environment, so not passed")
                    continue
                val = environ[var]
            target = sec.values if opt.local else out.values
            env = target.setdefault(opt.key, {})
            assert isinstance(env, dict)
            if opt.const in ("prepend", "append"):  # Open MPI 5's --prepend-env NAME[c] VAL
                var, val = _env_edit(name, var, val, env.get(var[:-3], environ.get(var[:-3])),
                                     opt.const == "prepend")
            elif isinstance(opt.const, str):  # --mca KEY VALUE: the variable's prefix
                var = opt.const + var
            env[var] = val
        elif opt.kind == FILE:
            from pm.options.option_files import config_args

            if read_config:
                raise UsageError(f"{name} inside a {name} file")
            read_config = True
            config = config_args(readable_file(raw, name), name)
        else:
            assert opt.check is not None
            value = opt.check(raw, name)
            if opt.check is ranks_directory:
                out.dirs.append((name, raw))
            if opt.key == "env_mode":
                value = ("list", value)
            elif opt.key in ("arg_files", "flux_env", *LISTS):  # -a FILE: another source
                files = out.values.setdefault(opt.key, [])
                assert isinstance(files, list)
                files.append(value)
                continue
            elif opt.key == "mpi" and value == "list":  # srun's: say what is served, exit
                out.action = "mpi_list"
                return out
            elif opt.key in ("hosts", "hostfile") and out.sections:
                # After the first program: this program's own hosts (Open MPI's --host and
                # --hostfile of an app context); before it, the job's (Hydra's -hosts).
                sec.values["hosts"] = value if opt.key == "hosts" else \
                    _hosts_of_file(str(value), name)
                continue
            if opt.key:  # (none: an option taken that means nothing here)
                (sec.values if opt.local else out.values)[opt.key] = value
    if at is not None:
        out.spans.append((*at, i))
    if not out.sections and "tasks" in out.values and set(sec.values) == {"wdir"}:
        out.values["wdir"] = sec.values.pop("wdir")  # --tasks FILE: every task's
    if sec.values:
        flags = " ".join(sorted({name for o, name in out.used.items()
                                 if o.local and o.key in sec.values}))
        raise UsageError(f"{flags} must come before a program" if out.sections
                         else "no program given (see pmrun --help)")
    if not out.sections and not ({"tasks", "topology", "number_of", "sim_ranks",
                                  "retry_failed", "shell_quote"}
                                 | _SEMAPHORE_KEYS) & out.values.keys():
        raise UsageError("no program given (see pmrun --help)")
    args_sep, files_sep = separators(out.values)
    if args_sep == files_sep:
        raise UsageError(f"--arg-sep and --arg-file-sep are both {args_sep!r}: sources of "
                         "arguments and of files need words of their own")
    if _SEMAPHORE_KEYS & out.values.keys():
        _semaphore(out)
        return out
    if "multi_prog" in out.values:
        from pm.options.option_files import _multi_prog

        _multi_prog(out)
    if "cat" in out.values and "fifo" in out.values:
        raise UsageError("--cat and --fifo: give one of them (a file, or a named pipe)")
    if ({"cat", "fifo", "roundrobin"} & out.values.keys()) and "pipepart" not in out.values:
        out.values["pipe"] = True  # (GNU parallel's: they are --pipe's)
    if "roundrobin" in out.values:
        _not_with(out, ("retries", "hosts", "cat", "fifo", "dry_run"),
                  "--roundrobin feeds runs on this machine block after block, as they read")
    if "shard" in out.values or "bin" in out.values:
        _sharded(out)
    if "group_by" in out.values:
        _group_by(out)
    if "onall" in out.values or "nonall" in out.values:
        _onall(out)
    if "retry_failed" in out.values:
        _retry_failed(out)
    elif "tee" in out.values:
        _tee(out)
    elif "pipe" in out.values or "pipepart" in out.values:
        _piped_command(out)
    elif "arg_files" in out.values or (len(out.sections) == 1 and "tasks" not in out.values) \
            or ("shell_quote" in out.values and not out.sections):  # (its arguments on stdin)
        _command_with_sources(out)
    if "tty" in out.values:
        _not_with(out, ("pipe", "pipepart", "tee", "cat", "fifo", "roundrobin", "shard", "bin",
                        "group_by", "onall", "nonall", "tag", "tagstring", "ctag",
                        "ctagstring", "color", "output_mode", "keep_order", "results",
                        "files", "transfer", "returns", "cleanup", "trc", "basefiles"),
                  "--tty gives each task pmrun's terminal and its output as it comes, on "
                  "this machine")
    _open_mpi_output(out)
    _flux_shell_option(out)
    _ensemble_only(out)
    if "onall" in out.values:
        _onall_words(out)
    if "pty" in out.values:  # srun's --pty: rank 0's terminal, passed on as it comes
        if str(out.values.get("stdin", "0")) != "0":
            raise UsageError(f"--pty gives rank 0 a terminal, with pmrun's stdin: not with "
                             f"{out.used.get(BY_NAME['--stdin'], '--stdin')} "
                             f"{out.values['stdin']}")
        out.values["unbuffered"] = True
        out.used.setdefault(BY_NAME["--unbuffered"], "--pty")
    _unbuffered(out, environ)
    _open_mpi_mapping(out.values, environ)
    _srun_export(out)
    _flux_env(out, environ)
    _output_filename(out)
    _flux_templates(out)
    _job_name_in_patterns(out, environ)
    if "merge_stderr" in out.values and "error" in out.values:
        raise UsageError("--merge-stderr-to-stdout leaves no stderr for --error to write")
    _srun_cpu_bind(out.values)
    _srun_hint(out.values)
    if "mem_bind" in out.values:  # srun's verbose: --report-bindings
        from pm.agent.membind import parse

        if parse(str(out.values["mem_bind"]))[1]:
            out.values["report_bindings"] = True
    _open_mpi_paths(out.values, environ)
    buffering = out.values.pop("stream_buffering", None)
    if buffering is not None:  # Open MPI's: its MCA parameter, 5's name and 4's
        genv = out.values.setdefault("genv", {})
        assert isinstance(genv, dict)
        for name in ("OMPI_MCA_ompi_stream_buffering", "OMPI_MCA_ess_base_stream_buffering"):
            genv.setdefault(name, str(buffering))
    _open_mpi_tune(out.values, environ)
    if "cpu_list" in out.values:  # Open MPI's --cpu-list: a CPU each rank, in turn
        cpus = out.values.pop("cpu_list")
        if "bind_to" not in out.values:
            out.values["bind_spelled"] = f"--cpu-list {_runs(str(cpus))}"
        if out.values.setdefault("bind_to", f"user:{cpus}") != f"user:{cpus}":
            raise UsageError(f"--cpu-list {cpus} binds each rank to one of these CPUs: not "
                             f"with --bind-to {out.values['bind_to']}")
    _cpus_per_task(out.values)
    _srun_exclude(out.values, environ)
    if "timeout" not in out.values and environ.get("MPIEXEC_TIMEOUT"):
        out.values["timeout"] = seconds(environ["MPIEXEC_TIMEOUT"].strip(), "MPIEXEC_TIMEOUT")
    default_file = next((v for v in _HOST_FILE_VARS if environ.get(v, "").strip()), None)
    if default_file and not (
            {"hosts", "hostfile", "local_nodes", "agents", "tasks", "tasks_line"}
            & out.values.keys()):
        # Hydra's default host file (a site's MPI module sets it): an MPI job without
        # hosts of its own runs on its hosts, before an allocation's, as Hydra's does.
        out.values["hostfile"] = hostfile(environ[default_file].strip(), default_file)
    _hydra_variables(out.values, environ)
    _ranks_directories(out, environ)
    if out.verbose >= 0:
        for text in unset:
            _warn(text)
    return out


def _ranks_directories(out: Parsed, environ: Mapping[str, str]) -> None:
    """The ranks' directories (-wdir, --path, --prefix) refused here, in one line, when
    one is none and every rank runs on this machine; when ranks run on other machines
    they need not be here (Hydra checks none): a node where one is missing says so as
    its ranks start."""
    if out.dirs and not ranks_elsewhere(out, environ):
        for name, raw in out.dirs:
            directory(raw, name)


def ranks_elsewhere(out: Parsed, environ: Mapping[str, str]) -> bool:
    """Whether the job's ranks (may) run on machines other than this one: hosts given that
    are not this machine (-hosts, -f, HYDRA_HOST_FILE, a program's own, a rankfile's), the
    persistent agents, or an allocation's (Slurm, PBS/Torque, LSF) when no hosts are
    given.  False for an ensemble's tasks (checked here as ever) and --local-nodes; a
    host list or rankfile that cannot be read counts as this machine (its own refusal
    comes later)."""
    from pm.common.hostlist import (
        HostlistError,
        batch_hostfile,
        expand,
        is_this_machine,
        parse_hostfile,
        parse_hosts_option,
    )

    values = out.values
    if {"tasks", "tasks_line", "local_nodes"} & values.keys():
        return False
    launcher = str(values.get("launcher", ""))
    if launcher in ("persistent", "persist") or "agents" in values:
        return True
    named: list[str] = []
    try:
        for given in (values, *(s.values for s in out.sections)):
            if "hosts" in given:
                named += [e.host for e in parse_hosts_option(str(given["hosts"]))]
        if "hostfile" in values:
            named += [e.host for e in parse_hostfile(file_text(str(values["hostfile"])))]
        if "rankfile" in values:
            from pm.common.rankfile import parse

            lines = parse(file_text(str(values["rankfile"])), "rankfile")
            named += [ln.host for ln in lines if ln.relative is None]
    except (HostlistError, OSError, UnicodeDecodeError, ValueError):  # (RankfileError too)
        pass
    if not all(map(is_this_machine, named)):
        return True
    if named or "hosts" in values or "hostfile" in values or launcher in ("local", "fork"):
        return False
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    try:
        if environ.get("SLURM_JOB_ID") and nodelist:
            return not all(map(is_this_machine, expand(nodelist)))
        found = batch_hostfile(environ)
        if found is not None:
            return not all(is_this_machine(e.host)
                           for e in parse_hostfile(file_text(found[1])))
    except (HostlistError, OSError, UnicodeDecodeError):
        return True  # (an allocation's hosts: not this machine's to say)
    return False


def _attached(short: Opt, arg: str) -> bool:
    """Whether ``arg`` is ``short`` with its value attached (srun's ``-n4``, ``-oout.%t``)
    rather than another launcher's long option written with one dash (Hydra's
    ``-ckpoint-prefix``, ``-order-nodes``, ``-info``; Open MPI's ``-nolocal``), which pmrun
    names as unknown instead of reading ``-c kpoint-prefix`` as a value of ``-c``."""
    tail = arg[2:]
    words = tail.split("-")
    if len(tail) < 3 or not all(w.isalpha() and w.islower() for w in words):
        return True  # a number, a path, a pattern, -nx: a value (its check names it)
    if len(words) > 1:
        return False  # words joined by dashes: an option's name
    assert short.check is not None
    try:
        short.check(tail, arg[:2])
    except UsageError:
        return False  # a word this option does not take: the name of another
    return True


def quick_ok(parsed: Parsed, environ: Mapping[str, str]) -> bool:
    """Whether the quick path (:mod:`pm.quick`) runs this job: one program on this machine,
    and only options it knows."""
    if parsed.action or len(parsed.sections) != 1 or "tasks_line" in parsed.values:
        return False
    if ({"rankfile", "rankmap"} & parsed.values.keys()
            or parsed.values.get("distribution") == "arbitrary"):
        return False  # (rankfile: also from --map-by rankfile:file=, a quick option)
    if environ.get("PM_QUICK", "1").strip() == "0":
        return False
    if environ.get("SLURM_JOB_NODELIST") and environ.get("SLURM_JOB_ID"):
        return False  # pm.cli_run runs the job over the allocation
    if environ.get("PBS_NODEFILE") or environ.get("LSB_DJOB_HOSTFILE"):
        return False  # (a PBS/Torque or LSF job's hosts and slots: the same)
    if parsed.values.get("nodes", 1) != 1:
        return False  # several hosts (or a refusal that the full path words)
    if "hosts" in parsed.values or "hostfile" in parsed.values:
        parsed.here = this_machine_alone(parsed)  # (read once: the quick path takes it)
        if parsed.here is None:
            return False
    return all(opt.quick for opt in parsed.used) and "display_allocation" not in parsed.values


def _hosts_of_file(path: str, opt: str) -> str:
    """A host file's hosts as a -hosts list (``host:N`` where it gives slots)."""
    from pm.common.hostlist import HostlistError, parse_hostfile

    try:
        entries = parse_hostfile(file_text(path))
    except (OSError, UnicodeDecodeError, HostlistError) as exc:
        raise UsageError(f"{opt} {path}: {exc}") from None
    return ",".join(e.host if e.slots is None else f"{e.host}:{e.slots}" for e in entries)


def this_machine_alone(parsed: Parsed) -> tuple[str, int | None] | None:
    """When -hosts or -f names this machine alone (Hydra's ``-hosts localhost``, a host
    file of ``localhost:8``): that host, as named, and its slots, which the quick path
    takes as the full path would (a rank a slot without -n; the slots are the universe
    size); None for anything else (other machines, several entries, -ppn)."""
    from pm.common.hostlist import is_this_machine, parse_hostfile, parse_hosts_option

    values = parsed.values
    if ("hosts" in values) == ("hostfile" in values) or "ppn" in values:
        return None
    if "hosts" in values:
        entries = parse_hosts_option(str(values["hosts"]))
    else:
        entries = parse_hostfile(file_text(str(values["hostfile"])))
    if len(entries) != 1 or not is_this_machine(entries[0].host):
        return None
    return entries[0].host, entries[0].slots
