"""A new user's first commands: bad values get one line and exit 2 (never a traceback),
on both of pmrun's paths, from the one option table (pm.options); Hydra's spellings work."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import mpiexec, pmrun_argv, pmrun_env

from pm import options
from pm.agent import topology
from pm.cli import parse as full_parse
from pm.jobenv import dropped
from pm.options import OPTIONS
from pm.options import checks as option_checks
from pm.options.help import usage
from pm.proto.errors import UsageError
from pm.quick import parse as quick_parse

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(60)

#: A bad value for every option whose value the table checks (key -> value).
BAD_VALUE = {
    "n": "x", "ppn": "0", "npersocket": "0", "rpl": "{x}", "hosts": "a[1-",
    "hostfile": "/no/such/hostfile",
    "universe_size": "lots", "hint": "fast", "job_name": "a/b", "tune": "/no/such/file",
    "personality": "prte", "gpus_per_task": "0", "order_nodes": "sideways",
    "memory_alloc_kinds": "a b", "acctg_freq": "task=x", "slurmd_debug": "loud",
    "mem_bind": "nearby", "total_jobs": "0", "cpu_freq": "turbo", "relative": "-1",
    "output_from": "x",
    "bind_to": "corez", "map_by": "foo", "env_mode": "A=1",
    "wdir": "/no/such/dir", "prepend": "%q", "output": "/no/such/dir/out.%r",
    "output_filename": "",
    "error": "/no/such/dir/err", "launcher": "rocket", "launcher_exec": "",
    "launcher_exec_args": "", "umask": "0800",
    "ssh": "", "user": "", "ssh_limit": "many", "agents": "/no/such/agents",
    "rankfile": "/no/such/rankfile", "rmk": "sge", "shard": "0", "bin": "-1",
    "slot_var": "A=1", "group_by": "0", "seqreplace": "", "slotreplace": "",
    "extensionreplace": "", "basenamereplace": "", "dirnamereplace": "",
    "basenameextensionreplace": "",
    "iface": "", "join_timeout": "0", "heartbeat": "-1", "local_nodes": "0",
    "fanout": "x", "kvs": "disk", "profile": "/nonexistent/x.json", "sim_ranks": "",
    "sim_value_size": "", "sim_exchange": "", "sim_gets": "", "tasks": "",
    "mem_per_task": "", "mem_high": "lots", "mem_low": "90 apples", "retries": "",
    "mem_overrun": "explode", "mem_settle": "", "timeout": "abc", "mpi": "ompi", "jobs": "x",
    "joblog": "", "halt": "later,fail=1", "colsep": "(", "tagstring": "",
    "arg_files": "/no/such/args", "delimiter": "ab", "header": "x", "results": "",
    "block": "0", "memfree": "lots", "memsuspend": "lots", "N": "x", "nodes": "0",
    "max_args": "-1", "rankmap": "1,,2", "agent_python": "",
    "cpus_per_task": "0", "distribution": "round", "delay": "-1", "export": "A B", "stdin": "x",
    "cpu_bind": "boards", "display": "topo", "replace": "", "trim": "x", "flux_env": "=",
    "stream_buffering": "3",
    "exclude": "a[1-", "nice": "20", "tmpdir": "/no/such/dir", "max_lines": "0",
    "wait_after_first": "1.5", "arg_sep": "", "arg_file_sep": "-x", "prefix": "/no/such",
    "exe_path": "/no/such", "cpu_list": "1-0", "report_pid": "/no/such/dir/pid",
    "rank_by": "cores", "sem_id": "", "sem_timeout": "0", "load": "lots", "limit": "mem",
    "ctagstring": "", "termseq": "TERM", "forward_signals": "SIGKILL",
    "signal_before_end": "USR1@x", "open_mode": "keep", "task_prolog": "",
    "srun_prolog": "", "srun_epilog": "", "task_epilog": "",
    "": "epoll",  # (-demux, -topolib: Hydra's, meaning nothing here)
}
CHECKED = [(opt, name) for opt in OPTIONS if opt.check not in (None, options.verbatim)
           for name in opt.names]


def refusal(argv: list[str], environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The messages both parsers refuse ``argv`` with."""
    with pytest.raises(UsageError) as quick:
        quick_parse(argv, environ or {})
    with pytest.raises(UsageError) as full:
        old = dict(os.environ)
        os.environ.update(environ or {})
        try:
            full_parse(argv)
        finally:
            os.environ.clear()
            os.environ.update(old)
    return str(quick.value), str(full.value)


@pytest.mark.parametrize(("opt", "name"), CHECKED, ids=[n for _, n in CHECKED])
def test_the_table_refuses_every_bad_value_the_same_way_on_both_paths(
        opt: options.Opt, name: str) -> None:
    assert opt.key in BAD_VALUE, f"add a bad value for {name} to BAD_VALUE"
    quick, full = refusal([name, BAD_VALUE[opt.key], "true"])
    assert quick == full
    assert name in quick and "\n" not in quick


def test_every_option_is_in_the_help_and_spelled_once() -> None:
    names = [n for opt in OPTIONS for n in opt.names]
    assert len(names) == len(set(names))
    text = usage()
    for opt in OPTIONS:
        assert ", ".join(opt.names) in text
    for group in options.GROUPS:
        assert f"\n{group}:\n" in text
    assert "MPIEXEC_TIMEOUT" in text and "PM_QUICK" in text


# ------------------------------------------------------------------ as a user runs it
CASES = [
    (["--bind-to", "corez", "-n", "1", "true"], {},
     "unknown --bind-to 'corez': expected one of none, hwthread, core, l3cache, numa, "
     "package (socket), or user:<cpus>,..."),
    (["--map-by", "foo", "--bind-to", "core", "-n", "1", "true"], {},
     "unknown --map-by 'foo': expected one of core, hwthread, l3cache, numa, numanode, "
     "package, slot, socket"),
    (["-bind-to", "core:x", "true"], {},
     "unknown qualifier 'x' in -bind-to 'core:x': a count of cores per rank (e.g. core:2) "
     "or 'overload-allowed'"),
    (["--profile", "/nonexistent/x.json", "-n", "1", "true"], {},
     "--profile /nonexistent/x.json: no such directory /nonexistent"),
    (["--profile", "/dev/null/x.json", "-n", "1", "true"], {},
     "--profile /dev/null/x.json: not a directory: /dev/null"),
    (["-wdir", "/dev/null", "-n", "1", "true"], {}, "-wdir /dev/null: not a directory"),
    (["-n", "1", "true"], {"MPIEXEC_TIMEOUT": "abc"}, "MPIEXEC_TIMEOUT takes seconds, not 'abc'"),
    (["--timeout", "200%", "-n", "1", "true"], {},
     "--timeout 200%: a percentage of the median successful run is for task ensembles; an "
     "MPI job's limit is seconds"),
    (["--timeout", "1h3", "-n", "1", "true"], {},
     "--timeout takes seconds (or 2m, 1h30m...), not '1h3'"),
    (["--timeout", "0%", "echo", ":::", "a"], {},
     "--timeout takes seconds or a percentage (200%), not '0%'"),
    (["-memory-alloc-kinds", "mpi,,system", "true"], {},
     "-memory-alloc-kinds takes memory kinds separated by commas (mpi,system,cuda:device), "
     "not 'mpi,,system'"),
    (["-n", "0", "true"], {}, "-n must be at least 1"),
    (["-genv"], {}, "-genv needs NAME VALUE"),
    (["-genv", "A"], {}, "-genv needs NAME VALUE (or NAME=VALUE)"),
    (["--nosuch", "true"], {}, "unknown option --nosuch (see pmrun --help)"),
    (["-n", "2"], {}, "no program given (see pmrun --help)"),
    (["-l=1", "true"], {}, "unknown option -l=1 (see pmrun --help)"),
    (["--label=1", "true"], {}, "--label takes no value"),
    (["-n", "1", "a", ":", "-n", "2"], {}, "-n must come before a program"),
    (["-prepend-pattern", "[%x]", "true"], {},
     "-prepend-pattern '[%x]': unknown %x (the pattern takes %r rank, %h host, %p node, "
     "%g job, %% percent)"),
    (["-usize", "0", "true"], {}, "-usize must be at least 1"),
    (["-launcher", "rocket", "true"], {},
     "-launcher takes local, fork, ssh, rsh, slurm, exec, persistent or persist, not 'rocket'"),
    (["-configfile", "/no/such/file"], {}, "-configfile /no/such/file: no such file"),
    (["-n0", "true"], {}, "-n must be at least 1"),
    (["-nx", "true"], {}, "-n takes a whole number, not 'x'"),
    (["-lx", "true"], {}, "unknown option -lx (see pmrun --help)"),
    # Another launcher's long option with one dash is not a short one with its value
    # (-c kpoint-prefix: cores a task; -o rder-nodes sideways; -n olocal).
    (["-ckpoint-prefix", "/tmp", "-n", "1", "true"], {},
     "unknown option -ckpoint-prefix (see pmrun --help)"),
    (["--exact", "-n", "1", "true"], {}, "--exact gives a job CPUs of its own within a Slurm "
     "allocation: this job's ranks are not started through Slurm"),
    (["--profile", "-n", "8", "true"], {}, "--profile takes a file to write, not the option "
     "-n (./-n names a file so called)"),
    (["-order-nodes", "sideways", "true"], {}, "-order-nodes takes ASCENDING or DESCENDING, "
     "not 'sideways'"),
    (["-nolocal", "-n", "1", "true"], {}, "no ranks on this machine (-skip-launch-node, "
     "--nolocal), but it is the only host (give -hosts or -f, or run inside an allocation)"),
    (["-skip-launch-node", "-hosts", "localhost:2", "true"], {}, "no ranks on this machine "
     "(-skip-launch-node, --nolocal), but every host given is this machine"),
    (["-pmi-args", "1", "-n", "1", "true"], {}, "unknown option -pmi-args (see pmrun --help)"),
    (["-gdba", "1", "-n", "1", "true"], {}, "unknown option -gdba (see pmrun --help)"),
    (["-demux", "epoll", "-n", "1", "true"], {}, "-demux takes poll or select, not 'epoll'"),
    (["-topolib", "plpa", "-n", "1", "true"], {}, "-topolib takes hwloc, not 'plpa'"),
    (["-N", "0", "true"], {}, "-N must be at least 1 (the hosts an MPI job runs on)"),
    (["-N", "2", "-n", "2", "true"], {},
     "-N 2: this machine is the only host (give -hosts or -f, or run inside an allocation)"),
    (["-N", "2", "--nodes", "3", "true"], {}, "-N 2 and --nodes 3 disagree"),
    (["--local-nodes", "2", "-N", "2", "-n", "1", "true"], {},
     "-N 2: 1 ranks cannot fill 2 nodes"),
    (["--local-nodes", "2", "-N", "3", "true"], {}, "-N 3: 2 local nodes (--local-nodes)"),
    (["-N", "2", "-hosts", "a,b,c", "-n", "1", "true"], {}, "-N 2: 1 ranks cannot fill 2 nodes"),
    (["-N", "4", "-hosts", "a,b,c", "true"], {}, "-N 4: there are 3 hosts (a, b, c)"),
    (["--max-args", "2", "-n", "2", "true"], {},
     "--max-args is for task ensembles (pmrun CMD ::: ARGS, --tasks FILE), not for an MPI "
     "job's ranks"),
    (["--nodes", "2", "echo", ":::", "a"], {},
     "--nodes is for an MPI job's ranks, not for task ensembles (their hosts: -S, -hosts)"),
    (["-N", "2", "echo", ":::", "a", ":::", "b"], {},
     "-N 2 takes the arguments of one input source, not of 2"),
    (["-N", "2", "echo", "{3}", ":::", "a"], {}, "echo {3}: {3} names argument 3: -N 2 gives 2"),
    (["-N", "0", "--pipe", "cat"], {}, "--pipe -N 0: a block of no record"),
    (["-q", "--tasks", "t.txt"], {},
     "-q quotes the words of a command: give the command (pmrun -q CMD ::: ARGS), not --tasks "
     "FILE"),
    (["-q", "-m", "echo", ":::", "a"], {}, "-q and -m: give one of them"),
    (["-k", "-n", "2", "prog"], {},
     "-k is for task ensembles (pmrun CMD ::: ARGS, --tasks FILE), not for an MPI job's ranks"),
    (["-c", "2", "--bind-to", "numa", "true"], {},
     "-c 2 binds each rank to 2 cores: --bind-to numa disagrees"),
    (["-c", "2", "--map-by", "slot:PE=3", "true"], {},
     "-c 2 binds each rank to 2 cores: --bind-to core:3 disagrees"),
    (["-n", "99999999999999999999", "true"], {},
     "-n 99999999999999999999: more than pmrun can run (at most 16777216)"),
    (["--local-nodes", "99999999999999999999", "true"], {},
     "--local-nodes 99999999999999999999: more than pmrun can run (at most 1024)"),
    (["--results", "/dev/null/x", "echo", ":::", "a"], {},
     "--results /dev/null/x: /dev/null is not a directory"),
    (["-c", "2", "echo", ":::", "a"], {},
     "-c is for an MPI job's ranks, not for task ensembles"),
    (["-l", "echo", ":::", "a"], {},
     "-l is for an MPI job's ranks, not for task ensembles (their output: --tag, --tagstring, "
     "--group, --lb)"),
    (["--stdin", "1", "echo", ":::", "a"], {},
     "--stdin is for an MPI job's ranks, not for task ensembles (their stdin: --pipe, "
     "--pipepart)"),
    (["-n", "2", "-i", "2", "true"], {}, "stdin goes to rank 2, not one of the job's 2 ranks"),
    (["-i", "/no/such/input", "true"], {}, "-i /no/such/input: no such file"),
    (["-t", "1:2:3:4", "true"], {}, "-t takes a time limit as srun's (MM, MM:SS, HH:MM:SS, "
     "D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED) or Flux's (30s, 10m, 1.5h, 1d), not '1:2:3:4'"),
    (["--time-limit", "0.5s", "true"], {}, "--time-limit must be at least a second, not '0.5s'"),
    (["-t", "0", "true"], {}, "-t must be at least a second, not '0'"),
    (["--export", "ALL,NONE", "true"], {}, "--export ALL,NONE: ALL and NONE disagree"),
    (["--export", "NONE,A", "true"], {}, "--export NONE,A: NONE passes no variable"),
    (["--export", "A B", "true"], {}, "--export takes ALL, NONE or NAME[=VALUE] separated by "
     "commas; 'A B' is not a variable"),
    (["--output-filename", "o", "--error", "e", "true"], {},
     "--output-filename writes each rank's stdout and stderr: --error e disagrees"),
    (["--output-filename", ":nocopy", "true"], {}, "--output-filename takes a folder, not ''"),
    (["--timestamp-output", "echo", ":::", "a"], {},
     "--timestamp-output is for an MPI job's ranks, not for task ensembles (their output: "
     "--tag, --tagstring, --group, --lb)"),
    (["-m", "-N", "2", "echo", ":::", "a"], {},
     "-m groups the arguments of an input source: not with -N"),
    (["-X", "echo", ":::", "a", ":::", "b"], {},
     "-X takes the arguments of one input source, not of 2"),
    (["-m", "-n", "2", "true"], {},
     "-m is for task ensembles (pmrun CMD ::: ARGS, --tasks FILE), not for an MPI job's ranks"),
    # A refusal names the option as it was written, not by its first spelling.
    (["--display-map", "echo", ":::", "a"], {},
     "--display-map is for an MPI job's ranks, not for task ensembles"),
    (["--jobs", "2", "--bind-to", "core", "true"], {},
     "--jobs is for task ensembles (pmrun CMD ::: ARGS, --tasks FILE), not for an MPI "
     "job's ranks"),
    (["a", ":", "-np", "2"], {}, "-np must come before a program"),
    (["--exclude", "a", "true"], {}, "--exclude leaves out nodes of a Slurm allocation: this "
     "is not inside one (no SLURM_JOB_NODELIST)"),
    (["--exclude", "a", "-w", "b", "true"], {}, "--exclude leaves out nodes of the Slurm "
     "allocation: not with -hosts, -w or -f"),
]


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_a_host_file_with_a_control_character_is_named(pmrun: Run, tmp_path: Path,
                                                       quick: str) -> None:
    (tmp_path / "hosts").write_bytes(b"node1\nno\x00de2:2\n")
    r = pmrun("-f", "hosts", "-n", "2", "true", env={"PM_QUICK": quick})
    assert (r.returncode, r.stderr) == (2, "pmrun: -f hosts: 'no\\x00de2' is not a host name (it "
                                           "holds a control or space character)\n")


@pytest.mark.parametrize(("quick", "nodes", "per_node"),
                         [("1", "1", 1000000), ("0", "1", 1000000), ("1", "2", 500000)],
                         ids=["quick", "full", "local-nodes"])
def test_more_ranks_than_descriptors_are_named_at_once(pmrun: Run, quick: str, nodes: str,
                                                       per_node: int) -> None:
    """A job this machine's nodes cannot hold is named before anything starts, in one line,
    on either path (rank by rank, a million ranks took 10 s to refuse on the full path)."""
    r = pmrun("-n", "1000000", "--local-nodes", nodes, "true", env={"PM_QUICK": quick},
              timeout=20)
    assert r.returncode == 127, r.stderr
    assert re.fullmatch(rf"pmrun: rank 0 \(node 0, \S+\) could not start: {per_node} ranks on "
                        r"one node need about \d+ file descriptors, but the limit is \d+ \(raise "
                        r"it with ulimit -n, or use fewer ranks per node\)\n", r.stderr), r.stderr


@pytest.mark.parametrize(("argv", "env", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_a_bad_command_line_is_one_line_and_exit_2(pmrun: Run, tmp_path: Path, argv: list[str],
                                                  env: dict[str, str], message: str,
                                                  quick: str) -> None:
    r = pmrun(*argv, env={**env, "PM_QUICK": quick})
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n")


def test_profile_is_checked_before_the_job_runs(pmrun: Run, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    (tmp_path / "ro").mkdir(mode=0o500)
    r = pmrun("--profile", str(tmp_path / "ro" / "p.json"), "touch", str(ran))
    if os.geteuid() == 0:  # root writes anywhere: the job runs, the profile is written
        assert r.returncode == 0 and ran.exists()
        return
    assert r.returncode == 2 and "permission denied" in r.stderr and not ran.exists()
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_help_groups_the_options_as_hydra_users_look_for_them(pmrun: Run) -> None:
    r = pmrun("--help")
    assert r.returncode == 0 and r.stderr == ""
    order = [r.stdout.index(f"\n{g}:\n") for g in options.GROUPS]
    assert order == sorted(order)
    assert "pmrun reads from its own environment:" in r.stdout
    assert "MPIEXEC_TIMEOUT" in r.stdout


# ------------------------------------------------------------------ Hydra's spellings
def test_genv_takes_one_word_and_two_word_forms(pmrun: Run) -> None:
    r = pmrun("-genv", "A=1", "-genv", "B", "2=3", "-n", "2", "sh", "-c", 'echo "$A $B"')
    assert (r.returncode, r.stdout, r.stderr) == (0, "1 2=3\n1 2=3\n", "")
    r = pmrun("-genv", "A=1", "-env", "C=x=y", "-n", "1", "sh", "-c", 'echo "$A $C"',
              env={"PM_QUICK": "0"})
    assert (r.returncode, r.stdout) == (0, "1 x=y\n"), r.stderr


def test_per_program_environment_modes(pmrun: Run) -> None:
    """-envnone/-envlist narrow what pmrun passes a program's ranks over their agent's own
    environment, as Hydra's: on this machine that is pmrun's own, so its ranks get all of
    it whatever the mode, as Hydra's mpiexec gives them its proxy's (other hosts:
    test_ssh.py)."""
    show = 'echo "$PMI_RANK ${KEEP:-none} ${DROP:-none} ${SET:-none}"'
    argv = ["-genv", "SET", "g",
            "-envnone", "-n", "1", "sh", "-c", show, ":",
            "-envlist", "KEEP", "-n", "1", "sh", "-c", show, ":",
            "-n", "1", "sh", "-c", show]
    env = {"KEEP": "k", "DROP": "d"}
    r = pmrun(*argv, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 k d g", "1 k d g", "2 k d g"]
    # What pmrun passes each program, which the agents put over their own.
    job, apps = full_parse(argv).spec.plan_env(env)
    assert [{**job, **app} for app in apps] == [
        {"SET": "g"}, {"SET": "g", "KEEP": "k"}, {"SET": "g", "KEEP": "k", "DROP": "d"}]
    # One program: the quick path gives it the same.
    r = pmrun("-envlist", "KEEP", "sh", "-c", show, env=env)
    assert (r.returncode, r.stdout) == (0, "0 k d none\n"), r.stderr


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_genvnone_ranks_here_start_from_pmruns_environment_as_hydras(pmrun: Run,
                                                                     quick: str) -> None:
    """Hydra's -genvnone passes nothing, and a rank starts from its proxy's environment:
    on the launcher's machine, the launcher's own, all of it (``mpiexec -genvnone -n 1
    env``).  pmrun's ranks here get pmrun's (less what it keeps from every rank)."""
    env = {"PM_QUICK": quick, "ONLY_IN_PMRUNS": "a b", "PMI_STRAY": "1", "LANG": "C.UTF-8"}
    launcher = pmrun_env(env)
    r = pmrun("-genvnone", "-genv", "SET", "g", "-n", "1", "env", env=env)
    assert r.returncode == 0, r.stderr
    got = _env_lines(r.stdout)
    theirs = {k: v for k, v in launcher.items() if not dropped(k) and k != "_"}
    assert {k: got.get(k) for k in theirs} == theirs
    assert (got["SET"], got["PMI_RANK"], "PMI_STRAY" in got) == ("g", "0", False)
    hydra = mpiexec()
    if hydra is not None:  # (the MPICH wheel's: it agrees)
        res = subprocess.run([str(hydra), "-genvnone", "-n", "1", "env"], env=launcher,
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        assert {k: v for k, v in _env_lines(res.stdout).items() if k in theirs} == theirs


def test_configfile_is_one_program_per_line(pmrun: Run, tmp_path: Path) -> None:
    conf = tmp_path / "job.conf"
    conf.write_text("# two programs\n"
                    "-n 2 sh -c 'echo first $PMI_RANK'   # a comment\n"
                    "\n"
                    "-env WHO second -n 1 \\\n"
                    "  sh -c 'echo $WHO $PMI_RANK'\n")
    for argv in (("-l", "-configfile", str(conf)), ("-configfile", str(conf), "-l")):
        r = pmrun(*argv)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.splitlines()) == ["[0] first 0", "[1] first 1", "[2] second 2"]
    # A program on the command line too: it comes first, then the file's.
    r = pmrun("-l", "-configfile", str(conf), "-n", "1", "sh", "-c", "echo cmdline $PMI_RANK")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] cmdline 0", "[1] first 1", "[2] first 2",
                                             "[3] second 3"]
    nested = tmp_path / "nested.conf"
    nested.write_text(f"-configfile {conf}\n")
    r = pmrun("-configfile", str(nested))
    assert (r.returncode, r.stderr) == (2, "pmrun: -configfile inside a -configfile file\n")


def test_core_n_binds_each_rank_to_n_cores(pmrun: Run) -> None:
    ncores = len(os.sched_getaffinity(0))
    if ncores < 2:
        pytest.skip("one cpu")
    show = "import os; print(sorted(os.sched_getaffinity(0)))"
    r = pmrun("-bind-to", "core:1", "-n", "1", "python", "-c", show)
    assert r.returncode == 0, r.stderr
    assert len(eval(r.stdout)) >= 1
    one = eval(r.stdout)
    r = pmrun("-bind-to", "core:2", "-n", "1", "python", "-c", show)
    assert r.returncode == 0, r.stderr
    two = eval(r.stdout)
    assert set(one) < set(two)
    r = pmrun("--map-by", "slot:PE=2", "-n", "1", "python", "-c", show)  # Open MPI's way
    assert (r.returncode, eval(r.stdout)) == (0, two), r.stderr


def test_core_n_takes_neighbours_within_the_mapping_domain() -> None:
    from pm.agent.binding import compute_bindings, parse_bind
    from pm.agent.topology import Topology

    f = frozenset
    # Two numa nodes of four cores, two hardware threads each: core c is cpus c and c+8.
    numa = (f([0, 1, 2, 3, 8, 9, 10, 11]), f([4, 5, 6, 7, 12, 13, 14, 15]))
    topo = Topology("test", tuple(range(16)), tuple(f({c, c + 8}) for c in range(8)), numa,
                    (f(range(16)),), (), 0, None)

    def cpus(bind: str, map_by: str, n: int = 4) -> list[list[int]] | str | None:
        b = compute_bindings(topo, n, bind, map_by)
        return [sorted(c) for c in b.cpusets] if b.cpusets is not None else b.notice

    assert cpus("core:2", "core") == [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13],
                                      [6, 7, 14, 15]]
    assert cpus("core:2", "numa") == [[0, 1, 8, 9], [4, 5, 12, 13], [2, 3, 10, 11],
                                      [6, 7, 14, 15]]
    assert cpus("hwthread:2", "core") == [[0, 8], [1, 9], [2, 10], [3, 11]]
    assert cpus("core:3", "core") == ("4 ranks with 3 core objects each, room for 2: not "
                                      "binding (use --bind-to core:3:overload-allowed to share)")
    assert cpus("core:3:overload-allowed", "core", 3) == [[0, 1, 2, 8, 9, 10],
                                                          [3, 4, 5, 11, 12, 13],
                                                          [0, 1, 2, 8, 9, 10]]
    assert str(parse_bind("core:1")) == "core" and str(parse_bind("Core:2")) == "core:2"


@pytest.mark.parametrize(("argv", "want"), [
    (["-launcher", "persist", "--agents", "AGENTS"], {"name": "persistent"}),
    (["-bootstrap", "ssh"], {"name": "ssh"}),
    (["-bootstrap", "rsh"], {"name": "ssh", "ssh": "rsh"}),
    (["-launcher-exec", "/opt/bin/myssh"], {"name": "ssh", "ssh": "/opt/bin/myssh"}),
    (["-bootstrap", "ssh", "-bootstrap-exec", "/opt/bin/myssh"],
     {"name": "ssh", "ssh": "/opt/bin/myssh"}),
    (["-launcher-exec", "ip netns exec {host} {command}"],
     {"name": "exec", "template": "ip netns exec {host} {command}"}),
    (["-launcher", "exec", "-launcher-exec", "env {command}"],
     {"name": "exec", "template": "env {command}"}),
    (["-iface", "lo"], {"name": "local", "iface": "lo"}),
])
def test_hydra_launcher_spellings(argv: list[str], want: dict[str, str],
                                  tmp_path: Path) -> None:
    from pm.bootstrap import bootstrap_options

    agents = tmp_path / "agents"
    agents.write_text("")
    argv = [str(agents) if a == "AGENTS" else a for a in argv]
    extra = full_parse([*argv, "prog"]).extra
    try:
        boot = bootstrap_options(extra)
    except ValueError as exc:  # an empty --agents file: the launcher was chosen all the same
        assert want == {"name": "persistent"} and "agents" in str(exc)
        return
    assert {k: boot.get(k) for k in want} == want


def test_a_launcher_exec_that_contradicts_the_launcher_is_refused() -> None:
    for argv in (["-launcher", "slurm", "-launcher-exec", "/usr/bin/ssh"],
                 ["-launcher", "ssh", "-launcher-exec", "x {host} {command}"]):
        with pytest.raises(UsageError, match="goes with --launcher"):
            full_parse([*argv, "prog"])


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_prepend_pattern(pmrun: Run, quick: str) -> None:
    host = os.uname().nodename
    r = pmrun("-prepend-pattern", "%h:%p:%g:%r%% ", "-n", "2", "echo", "hi",
              env={"PM_QUICK": quick})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"{host}:0:0:0% hi", f"{host}:0:0:1% hi"]


def test_prepend_pattern_names_each_rank_s_node(pmrun: Run) -> None:
    r = pmrun("-prepend-pattern", "<%r@%p> ", "--local-nodes", "2", "-n", "3", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["<0@0> hi", "<1@0> hi", "<2@1> hi"]


@pytest.mark.parametrize("spelling", [["-N", "2"], ["--nodes", "2"], ["-N2"]])
def test_minus_n_nodes_runs_on_the_first_n_nodes_as_srun_does(pmrun: Run,
                                                             spelling: list[str]) -> None:
    r = pmrun(*spelling, "-prepend-pattern", "<%r@%p> ", "--local-nodes", "3", "-n", "4",
              "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["<0@0> hi", "<1@0> hi", "<2@1> hi", "<3@1> hi"]
    # With -ppn and no -n: N nodes of ppn ranks each (srun -N 2 --ntasks-per-node 3).
    r = pmrun(*spelling, "-ppn", "3", "-prepend-pattern", "%p ", "--local-nodes", "3", "echo")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["0", "0", "0", "1", "1", "1"]


def test_hydras_launcher_variables_act_as_its_options_for_a_job_on_hosts(pmrun: Run) -> None:
    """``HYDRA_LAUNCHER``/``HYDRA_LAUNCHER_EXEC`` (``I_MPI_HYDRA_BOOTSTRAP*``, which a site's
    MPI module sets) start the agents of a job given hosts, as ``-launcher``/``-launcher-exec``
    would; a launcher pmrun lacks is ignored with a line, a bad ``HYDRA_IFACE`` named."""
    # (Hosts a and b exist only through the template, which runs their agents here.)
    env = {"HYDRA_LAUNCHER": "exec", "I_MPI_HYDRA_BOOTSTRAP_EXEC": "env {command}"}
    r = pmrun("-hosts", "a,b", "-n", "2", "-l", "sh", "-c", "echo $PMI_SIZE", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] 2", "[1] 2"], r.stdout
    r = pmrun("-n", "1", "true", env={"I_MPI_HYDRA_BOOTSTRAP": "pbsdsh", "HYDRA_IFACE": "no0"})
    assert (r.returncode, r.stderr) == (0, ""), r.stderr  # (no hosts: neither means anything)
    r = pmrun("-hosts", "localhost", "-n", "1", "true",
              env={"I_MPI_HYDRA_BOOTSTRAP": "pbsdsh"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("pmrun: I_MPI_HYDRA_BOOTSTRAP=pbsdsh ignored: pmrun's "
                               "launchers are local, "), r.stderr
    r = pmrun("-hosts", "a,b", "-n", "1", "true", env={"HYDRA_IFACE": "no0"})
    assert r.returncode == 2 and r.stderr.startswith(
        "pmrun: HYDRA_IFACE no0: no such interface here"), r.stderr


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_hydras_default_host_file_is_read(pmrun: Run, tmp_path: Path, quick: str) -> None:
    """``HYDRA_HOST_FILE`` (a site's MPI module sets it): an MPI job given no hosts runs
    on its hosts, as Hydra's does; hosts given, or a task ensemble, do without it."""
    (tmp_path / "hosts").write_text("localhost:3\n")
    env = {"PM_QUICK": quick, "HYDRA_HOST_FILE": str(tmp_path / "hosts")}
    r = pmrun("sh", "-c", "echo $PMI_SIZE", env=env)
    assert (r.returncode, r.stdout) == (0, "3\n" * 3), r.stderr
    env["HYDRA_HOST_FILE"] = str(tmp_path / "none")
    r = pmrun("true", env=env)
    assert (r.returncode, r.stderr) == (
        2, f"pmrun: HYDRA_HOST_FILE {tmp_path / 'none'}: no such file\n")
    for argv in (["-hosts", "localhost", "-n", "2"], ["--local-nodes", "2", "-n", "2"]):
        r = pmrun(*argv, "sh", "-c", "echo $PMI_SIZE", env=env)
        assert (r.returncode, r.stdout) == (0, "2\n2\n"), r.stderr
    r = pmrun("echo", ":::", "a", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\n", "")


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_a_script_without_a_hash_bang_line_runs_in_the_shell(pmrun: Run, tmp_path: Path,
                                                            quick: str) -> None:
    """As execvp runs it (Hydra, a shell): pmrun said "Exec format error"."""
    prog = tmp_path / "plain"
    prog.write_text('echo "$PMI_RANK $# $1"\n')
    prog.chmod(0o755)
    r = pmrun("-n", "2", str(prog), "a b", env={"PM_QUICK": quick})
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["0 1 a b", "1 1 a b"]), \
        r.stderr


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_ppn_without_minus_n_runs_that_many_on_every_node(pmrun: Run, quick: str) -> None:
    """Hydra's ``-ppn 2``, Open MPI's ``--npernode 2``, srun's ``--ntasks-per-node 2`` and
    Flux's ``--tasks-per-node 2`` without ``-n``: 2 ranks on each node, whatever slots the
    hosts have (pmrun ran a rank a slot: one rank on this machine)."""
    for argv, want in ((["-ppn", "2"], ["0", "0"]),
                       (["--ntasks-per-node", "3", "-hosts", "localhost:2"], ["0"] * 3),
                       (["--npernode", "2", "--local-nodes", "3"], ["0", "0", "1", "1", "2", "2"]),
                       (["-ppn", "2", "-n", "3"], ["0", "0", "0"])):
        r = pmrun(*argv, "-prepend-pattern", "%p ", "sh", "-c", "echo $PMI_SIZE",
                  env={"PM_QUICK": quick})
        assert r.returncode == 0, (argv, r.stderr)
        nodes = sorted(line.split()[0] for line in r.stdout.splitlines())
        assert nodes == want, (argv, r.stdout)
        assert {line.split()[1] for line in r.stdout.splitlines()} == {str(len(want))}


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_one_node_asked_with_minus_n_runs_on_the_quick_path(pmrun: Run, quick: str) -> None:
    """srun's and Flux's habit ``-N 1 -n 4`` is a one-node job: the quick path takes it
    (it took the full path, three times as slow to start), with srun's -N 1 -ppn 3 too."""
    assert quick_parse(["-N", "1", "-n", "4", "prog"], {}) is not None
    q = quick_parse(["--nodes", "1", "-ppn", "3", "prog"], {})
    assert q is not None and q.n == 3
    assert quick_parse(["-N", "2", "-n", "4", "prog"], {}) is None
    r = pmrun("-N", "1", "-ppn", "3", "sh", "-c", "echo $PMI_SIZE", env={"PM_QUICK": quick})
    assert (r.returncode, r.stdout) == (0, "3\n3\n3\n"), r.stderr


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_a_host_list_of_this_machine_alone_runs_on_the_quick_path(
        pmrun: Run, tmp_path: Path, quick: str) -> None:
    """Hydra's habit ``-hosts localhost:3`` or a host file of ``localhost:3``: a one-node
    job, run by the quick path (it took the full path, 5x slower to start), with a rank
    a slot and the host as named; several hosts or other machines are not."""
    (tmp_path / "hosts").write_text("localhost:3\n")
    for given in (["-hosts", "localhost:3"], ["-f", str(tmp_path / "hosts")]):
        q = quick_parse([*given, "prog"], {})
        assert q is not None and (q.n, q.host) == (3, "localhost")
        r = pmrun(*given, "-prepend-pattern", "%h %r: ", "sh", "-c", "echo $PMI_SIZE",
                  env={"PM_QUICK": quick})
        assert (r.returncode, sorted(r.stdout.splitlines())) == (
            0, ["localhost 0: 3", "localhost 1: 3", "localhost 2: 3"]), r.stderr
    for other in (["-hosts", "localhost,elsewhere"], ["-hosts", "elsewhere"]):
        assert quick_parse([*other, "prog"], {}) is None, other


UNIVERSE = "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_attr(MPI.UNIVERSE_SIZE))"


@pytest.mark.mpi
@pytest.mark.parametrize(("argv", "want"), [
    (["-hosts", "localhost:4", "-n", "2"], 4), (["-hosts", "localhost:2", "-n", "3"], 3),
    (["-n", "2", "-usize", "7"], 7), (["-hosts", "localhost:5", "-n", "2", "-usize", "SYSTEM"], 5),
    (["-n", "1", "-usize", "SYSTEM"], len(os.sched_getaffinity(0)))])
def test_the_universe_size_is_the_same_on_both_paths(pmrun: Run, argv: list[str],
                                                     want: int) -> None:
    # A host's slots beside -n, and -usize, on the quick path too: the same size told.
    q = quick_parse([*argv, "prog"], {})
    assert q is not None and (q.usize or q.n) == want, argv
    for quick in ("1", "0"):
        r = pmrun(*argv, "python", "-c", UNIVERSE, env={"PM_QUICK": quick})
        assert r.returncode == 0, r.stderr
        assert set(r.stdout.split()) == {str(want)}, (quick, r.stdout)


@pytest.mark.parametrize(("argv", "hosts", "slots", "n"), [
    # srun's layout: a rank a node while it has slots (a host without a count: no end).
    (["-N", "3", "-n", "7"], ["a", "b", "c"], [3, 1, 3], 7),
    (["-N", "2", "-n", "4"], ["a", "b"], [3, 1], 4),
    (["-N", "2", "-n", "7"], ["a", "b"], [5, 2], 7),
    (["-N", "2", "-ppn", "3"], ["a", "b"], [4, 1], 6),
    (["-ppn", "2"], ["a", "b", "c", "d"], [4, 1, None, None], 8),
    (["-N", "2"], ["a", "b"], [4, 1], 5),
    (["-N", "4"], ["a", "b", "c", "d"], [4, 1, 1, 1], 7),
])
def test_minus_n_spreads_the_ranks_over_the_first_n_hosts(
        argv: list[str], hosts: list[str], slots: list[int], n: int) -> None:
    from pm.cli_nodes import hosts_of

    opts = full_parse([*argv, "-hosts", "a:4,b:1,c,d", "--launcher", "exec",
                       "--launcher-exec", "{command}", "true"])
    where = hosts_of(opts)
    assert where is not None
    assert (where[0], where[1], opts.spec.apps[0].n) == (hosts, slots, n)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cpus")
def test_srun_s_long_options_and_cpus_per_task(pmrun: Run) -> None:
    r = pmrun("--ntasks", "1", "--ntasks-per-node", "1", "-c", "2", "sh", "-c",
              "grep Cpus_allowed_list /proc/self/status")
    assert r.returncode == 0, r.stderr
    allowed = set()
    for part in r.stdout.split()[-1].split(","):
        lo, _, hi = part.partition("-")
        allowed.update(range(int(lo), int(hi or lo) + 1))
    assert len(allowed) == 2, r.stdout
    assert full_parse(["-c", "2", "--bind-to", "hwthread", "true"]).spec.bind_to == "hwthread:2"
    assert full_parse(["-c", "2", "true"]).spec.bind_to == "core:2"
    # Open MPI's: --cpus-per-rank (4.x) is -c; --use-hwthread-cpus counts hardware threads.
    assert full_parse(["--cpus-per-rank", "2", "true"]).spec.bind_to == "core:2"
    for argv in (["--use-hwthread-cpus", "-c", "2"], ["--map-by", "slot:PE=2",
                                                      "--use-hwthread-cpus"]):
        assert full_parse([*argv, "true"]).spec.bind_to == "hwthread:2", argv
        q = quick_parse([*argv, "true"], {})
        assert q is not None and q.bind_to == "hwthread:2", argv
    assert full_parse(["--use-hwthread-cpus", "true"]).spec.bind_to == "none"  # (as without)


#: srun's manual's example of --multi-prog, echoing where it ran hostname.
MULTI_PROG = """# srun's example
4-6       echo  host
1,7       echo  task:%t
0,2-3     echo  offset:%o
"""


def test_multi_prog_runs_each_rank_s_line_as_srun_does(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "silly.conf").write_text(MULTI_PROG)
    r = pmrun("-n", "8", "-l", "--multi-prog", str(tmp_path / "silly.conf"))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [
        "[0] offset:0", "[1] task:1", "[2] offset:1", "[3] offset:2", "[4] host", "[5] host",
        "[6] host", "[7] task:7"]
    # '*' on the last line: every rank no line named; -n counts the ranks.
    (tmp_path / "rest.conf").write_text("0 echo first\n* sh -c 'echo %t %o $PMI_SIZE'\n")
    r = pmrun("-n", "3", "--multi-prog", str(tmp_path / "rest.conf"))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["1 0 3", "2 1 3", "first"]


@pytest.mark.parametrize(("text", "argv", "message"), [
    ("0 echo a\n* echo b\n", [], "'*' needs the ranks' count (-n N)"),
    ("0-1 echo a\n", ["-n", "3"], "no line for rank 2"),
    ("0-3 echo a\n", ["-n", "2"], ", line 1: rank 2, beyond the 2 ranks (-n 2)"),
    ("0 echo a\n0 echo b\n", [], ", line 2: rank 0 has a line already"),
    ("* echo a\n0 echo b\n", ["-n", "2"], ", line 2: '*' must be the last line"),
    ("3-1 echo a\n", [], ", line 1: '3-1' is not ranks (0-3,5 or *)"),
    ("0\n", [], ", line 1: ranks and a program, not '0'"),
    ("# nothing\n", [], "no line for rank 0"),
])
def test_a_bad_multi_prog_file_is_named(pmrun: Run, tmp_path: Path, text: str,
                                        argv: list[str], message: str) -> None:
    conf = tmp_path / "m.conf"
    conf.write_text(text)
    r = pmrun(*argv, "--multi-prog", str(conf))
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: --multi-prog {conf}{message}\n"
                                                  if message.startswith(",") else
                                                  f"pmrun: --multi-prog {conf}: {message}\n")
    r = pmrun("--multi-prog", str(conf), "x")
    assert r.stderr == ("pmrun: --multi-prog takes one file in place of the program (pmrun -n 8 "
                        "--multi-prog FILE), nothing else\n")


def test_short_options_take_their_value_attached_as_srun_and_parallel_do(pmrun: Run,
                                                                        tmp_path: Path) -> None:
    r = pmrun("-n3", "-l", "echo", "x")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] x", "[1] x", "[2] x"]
    r = pmrun("-j1", "-k", "echo", ":::", "a", "b")
    assert (r.returncode, r.stdout) == (0, "a\nb\n"), r.stderr
    r = pmrun("-n1", "-oout.txt", "-eerr", "echo", "x", cwd=tmp_path)  # srun's -oFILE, -eFILE
    assert (r.returncode, (tmp_path / "out.txt").read_text()) == (0, "x\n"), r.stderr


def test_open_mpis_long_options_take_one_dash_as_mpirun_does(pmrun: Run) -> None:
    r = pmrun("-tag-output", "-display-map", "-n", "2", "echo", "x")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] x", "[1] x"]
    assert r.stderr.startswith("pmrun: rank map: node 0 ("), r.stderr


def test_open_mpis_prefix_and_path_put_a_directory_first(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "pfx" / "bin").mkdir(parents=True)
    tool = tmp_path / "pfx" / "bin" / "mytool"
    tool.write_text('#!/bin/sh\necho "$PATH" "$LD_LIBRARY_PATH"\n')
    tool.chmod(0o755)
    pfx = str(tmp_path / "pfx")
    r = pmrun("--prefix", pfx, "-n", "1", "mytool", env={"LD_LIBRARY_PATH": "/x"})
    assert r.returncode == 0, r.stderr
    path, libs = r.stdout.split()
    assert (path.split(":")[0], libs) == (f"{pfx}/bin", f"{pfx}/lib:/x")
    r = pmrun("--path", f"{pfx}/bin", "-n", "2", "mytool")
    assert r.returncode == 0, r.stderr
    assert [line.split()[0].split(":")[0] for line in r.stdout.splitlines()] == [f"{pfx}/bin"] * 2
    r = pmrun("-n", "1", "mytool")  # (without: not found)
    assert r.returncode == 127 and "mytool: command not found" in r.stderr, r.stderr
    r = pmrun("--prefix", str(tmp_path / "none"), "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, f"pmrun: --prefix {tmp_path / 'none'}: no such "
                                           "directory\n")


def test_open_mpis_report_pid_and_do_not_launch(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("--report-pid", "-", "-n", "1", "sh", "-c", "echo $PPID >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().isdigit(), r.stdout
    r = pmrun("--report-pid", "pid.txt", "-n", "1", "true", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "pid.txt").read_text().strip().isdigit()
    host = os.uname().nodename
    r = pmrun("--do-not-launch", "--display-map", "--local-nodes", "2", "-n", "3", "sh", "-c",
              "echo ran > ran.txt", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert r.stderr == (f"pmrun: rank map: node 0 ({host}): 0-1\n"
                        f"pmrun: rank map: node 1 ({host}): 2\n")
    assert not (tmp_path / "ran.txt").exists()


def test_open_mpis_nooversubscribe_refuses_more_ranks_than_slots(pmrun: Run) -> None:
    host = os.uname().nodename
    r = pmrun("--nooversubscribe", "-hosts", f"{host}:2", "-n", "3", "true")
    assert (r.returncode, r.stderr) == (127, "pmrun: --nooversubscribe: 3 ranks but 2 slots "
                                             f"({host}: 2)\n")
    r = pmrun("--nooversubscribe", "-hosts", f"{host}:2", "-n", "2", "echo", "x")
    assert (r.returncode, r.stdout) == (0, "x\nx\n"), r.stderr


def test_open_mpis_cpu_list_binds_ranks_in_turn(pmrun: Run) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    spec = ",".join(map(str, cpus))
    r = pmrun("--cpu-list", spec, "--report-bindings", "-n", str(len(cpus)), "true")
    assert r.returncode == 0, r.stderr
    host = os.uname().nodename
    assert sorted(r.stderr.splitlines()) == [f"rank {i} on {host}: cpus {c}"
                                             for i, c in enumerate(cpus)]
    r = pmrun("--cpu-list", "0", "--bind-to", "core", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: --cpu-list 0 binds each rank to one of "
                                           "these CPUs: not with --bind-to core\n")


def test_open_mpis_app_file_is_a_configfile(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "app.txt").write_text("-np 1 echo first\n# a comment\n-np 2 echo second\n")
    r = pmrun("--app", "app.txt", cwd=tmp_path)
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["first", "second", "second"])
    r = pmrun("--machinefile", "none.txt", "-n", "1", "true", cwd=tmp_path)
    assert r.returncode == 2 and "none.txt" in r.stderr, r.stderr


@pytest.mark.parametrize(("argv", "want"), [
    (["--map-by", "node", "--rank-by", "slot"], ["0-2", "3-4"]),
    (["--rank-by", "node"], ["0,2,4", "1,3"]),
    (["--rank-by", "core:span", "-m", "cyclic"], ["0-2", "3-4"]),
])
def test_open_mpis_rank_by_numbers_each_nodes_ranks(pmrun: Run, argv: list[str],
                                                    want: list[str]) -> None:
    host = os.uname().nodename
    r = pmrun("--display-map", "--local-nodes", "2", "-ppn", "3", *argv, "-n", "5", "sh", "-c",
              'echo "$PMI_RANK $MPI_LOCALRANKID"')
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"pmrun: rank map: node {i} ({host}): {ranks}"
                                     for i, ranks in enumerate(want)]
    # Each node's agent starts the ranks the map gives it, numbered in order there.
    local = dict(line.split() for line in r.stdout.splitlines())
    ranks = [[r for part in node.split(",") for r in _span(part)] for node in want]
    assert local == {str(r): str(i) for node in ranks for i, r in enumerate(node)}


def _span(part: str) -> list[int]:
    lo, _, hi = part.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def test_open_mpis_rankfile_places_and_binds_each_rank(pmrun: Run, tmp_path: Path) -> None:
    host = os.uname().nodename
    (tmp_path / "rf").write_text("rank 0=+n1 slot=1\nrank 1=+n0 slot=0:0\nrank 2=+n1\n")
    show = 'echo "$PMI_RANK $MPI_LOCALRANKID $PMI_SIZE"'
    r = pmrun("--local-nodes", "2", "-rf", "rf", "--display-map", "--report-bindings",
              "sh", "-c", show, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 0 3", "1 0 3", "2 1 3"]
    lines = r.stderr.splitlines()
    assert lines[:2] == [f"pmrun: rank map: node 0 ({host}): 1",
                         f"pmrun: rank map: node 1 ({host}): 0,2"], r.stderr
    if len(topology.discover(use_hwloc=False).cores) >= 2:  # (no slot: every CPU)
        assert sorted(lines[2:])[:2] == [f"rank 0 on {host}: cpus 1",
                                         f"rank 1 on {host}: cpus 0"], r.stderr
    # On this machine by its names; -n takes the first ranks; Open MPI 5's spelling.
    (tmp_path / "here").write_text(f"rank 0={host}\nrank 1=localhost\nrank 2={host}\n")
    r = pmrun("--map-by", "rankfile:file=here", "-n", "2", "sh", "-c", show, cwd=tmp_path)
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["0 0 2", "1 1 2"]), r.stderr


def test_double_dash_ends_the_options(pmrun: Run) -> None:
    """srun's and Flux's ``--``: what follows is the program, even a word starting with -."""
    r = pmrun("-n", "2", "--", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\nhi\n"), r.stderr
    r = pmrun("-n", "1", "--", "echo", "a", ":", "-n", "1", "--", "echo", "b")
    assert (r.returncode, sorted(r.stdout.split())) == (0, ["a", "b"]), r.stderr
    r = pmrun("-n", "1", "--", "-no-such-program")
    assert r.returncode == 127 and "-no-such-program: command not found" in r.stderr
    r = pmrun("-n", "1", "--")
    assert (r.returncode, r.stderr) == (2, "pmrun: nothing after '--': give the program\n")

def test_a_batch_job_on_this_machine_alone_runs_here_quietly(pmrun: Run, tmp_path: Path
                                                             ) -> None:
    """A one-node PBS/Torque or LSF job (its host file names this machine): its slots, no
    warning about agents elsewhere (there are none)."""
    host = os.uname().nodename
    (tmp_path / "nodes").write_text(f"{host}\n{host}\n{host}\n")
    for var in ("PBS_NODEFILE", "LSB_DJOB_HOSTFILE"):
        r = pmrun("sh", "-c", 'echo "$PMI_RANK $PMI_SIZE"', cwd=tmp_path,
                  env={var: str(tmp_path / "nodes"), "SLURM_JOB_ID": "", "SLURM_JOB_NODELIST": ""})
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert sorted(r.stdout.splitlines()) == ["0 3", "1 3", "2 3"]

@pytest.mark.parametrize(("text", "argv", "message"), [
    ("rank 0=+n1\n", [], "--rankfile rf: rank 0 is on +n1, the job has 1 host"),
    ("rank 0=+n0\n", ["-n", "2"], "--rankfile rf places 1 ranks: the job has 2"),
    ("rank 0=+n0 slot=0\n", ["--bind-to", "core"],
     "--rankfile rf places every rank: --bind-to disagrees"),
    ("rank 0=+n0\n", ["-ppn", "1"], "--rankfile rf places every rank: -ppn "),
    ("rank 0=elsewhere\n", ["-hosts", "h1"],
     "--rankfile rf: rank 0 is on elsewhere, not one of the job's hosts (h1)"),
    ("rank 0=+n0 slot=a\n", [], "rankfile rf line 1: slot=a: 'a' is not a core"),
    ("rank 0=+n0 slot=9999\n", ["--local-nodes", "2"],
     "rankfile: rank 0 on node 0 ("),
])
def test_a_rankfile_pmrun_cannot_follow_is_named(pmrun: Run, tmp_path: Path, text: str,
                                                 argv: list[str], message: str) -> None:
    (tmp_path / "rf").write_text(text)
    r = pmrun("-rf", "rf", *argv, "true", cwd=tmp_path)
    assert r.returncode in (2, 255) and r.stderr.startswith(f"pmrun: {message}"), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


_RESOURCES = "asks Slurm for resources, which an allocation grants"
_SCHEDULING = "is about how Slurm schedules an allocation"


@pytest.mark.parametrize(("argv", "what"), [
    *(([*a], _RESOURCES) for a in (["-p", "debug"], ["--partition=debug"], ["--mem", "4G"],
                                   ["--exclusive"], ["-A", "proj"], ["--gres=gpu:1"],
                                   ["--threads-per-core=1"], ["--ntasks-per-core", "1"])),
    *(([*a], _SCHEDULING) for a in (["--begin", "now+1hour"], ["--dependency=afterok:12"],
                                    ["--mail-type", "ALL"], ["--test-only"],
                                    ["--time-min=10"]))])
def test_sruns_requests_for_an_allocation_are_refused_saying_where_they_go(
        pmrun: Run, argv: list[str], what: str) -> None:
    r = pmrun(*argv, "-n", "1", "true")
    word = argv[0].partition("=")[0]
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"pmrun: {word} {what}: give it to salloc or sbatch, and run pmrun inside (it "
               "starts the ranks on the allocation's nodes)\n")


@pytest.mark.parametrize("argv", [["--urgency=31"], ["--queue", "batch"], ["--bank", "b"],
                                  ["--begin-time=+1h"], ["--requires=host:x"],
                                  ["--setattr=system.x=1"], ["--cc=1-3"], ["--flags=waitable"]])
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_fluxs_queue_options_are_refused_saying_why(pmrun: Run, argv: list[str],
                                                    quick: str) -> None:
    r = pmrun(*argv, "-n", "1", "true", env={"PM_QUICK": quick})
    word = argv[0].partition("=")[0]
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"pmrun: {word} is about how Flux queues a job (flux submit, flux alloc): "
               "pmrun starts its job at once, on this machine or the hosts given\n")


def test_open_mpis_ppr_per_core_runs_a_rank_on_each_core(pmrun: Run) -> None:
    cores = topology.discover(use_hwloc=False).cores
    r = pmrun("--map-by", "ppr:1:core", "--bind-to", "core", "--report-bindings", "sh", "-c",
              'echo "$PMI_RANK"')
    assert r.returncode == 0, r.stderr
    assert sorted(map(int, r.stdout.split())) == list(range(len(cores)))
    host = os.uname().nodename
    assert sorted(r.stderr.splitlines()) == sorted(
        f"rank {i} on {host}: cpus {topology.format_cpuset(core)}"
        for i, core in enumerate(cores))


def test_hydras_options_that_mean_nothing_here_are_taken(pmrun: Run) -> None:
    r = pmrun("-disable-x", "-demux", "poll", "-topolib", "hwloc",
              "-disable-hostname-propagation", "--noprefix", "--leave-session-attached",
              "-silent-abort", "-n", "1", "echo", "x")
    assert (r.returncode, r.stdout, r.stderr) == (0, "x\n", "")


def test_info_says_what_pmrun_serves_and_found_here(pmrun: Run) -> None:
    r = pmrun("-info")
    assert r.returncode == 0, r.stderr
    rows = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert list(rows) == ["Version", "PMI served", "PMIx server", "Topology", "Launchers",
                          "Allocations read"]
    assert rows["Version"].split()[0] == "pmrun"
    assert "OpenPMIx" in rows["PMIx server"] or "cannot load" in rows["PMIx server"]
    assert "libhwloc" in rows["Topology"]


@pytest.mark.parametrize("argv", [["--mpi=list"], ["--mpi", "list"], ["--mpi=list", "-n", "2",
                                                                     "false"]])
def test_mpi_list_says_what_each_type_serves_as_sruns_does(pmrun: Run, argv: list[str]) -> None:
    r = pmrun(*argv)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    head, *rows = r.stdout.splitlines()
    assert head == "MPI types pmrun serves (--mpi TYPE):"
    assert [row.split()[0] for row in rows] == ["auto", "pmi", "pmix", "none"]
    pmix = rows[2]
    assert "OpenPMIx" in pmix or "not here: cannot load" in pmix, pmix


def test_sruns_overlap_is_taken_as_pmrun_always_does(pmrun: Run) -> None:
    r = pmrun("--overlap", "-n", "2", "echo", "x")
    assert (r.returncode, r.stdout, r.stderr) == (0, "x\nx\n", "")
    r = pmrun("--overlap=yes", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: --overlap takes no value\n")


#: Rank 0 exits 0; rank 1 exits 3 once rank 0 is gone (reaped), so that its failure, which
#: ends the job, cannot kill rank 0 first.
EXIT_AFTER_RANK_0 = """
pid=$1/pid
if [ "$PMI_RANK" = 0 ]; then echo $$ > "$pid.tmp" && mv "$pid.tmp" "$pid"; exit 0; fi
until [ -s "$pid" ]; do sleep 0.01; done
while kill -0 "$(cat "$pid")" 2>/dev/null; do sleep 0.01; done
exit 3
"""


def test_print_all_exitcodes(pmrun: Run, tmp_path: Path) -> None:
    host = os.uname().nodename
    r = pmrun("-print-all-exitcodes", "--local-nodes", "2", "-n", "4", "true")
    assert (r.returncode, r.stderr) == (0, f"pmrun: exit codes [{host}] 0,0\n"
                                           f"pmrun: exit codes [{host}] 0,0\n")
    r = pmrun("-print-all-exitcodes", "-n", "2", "sh", "-c", EXIT_AFTER_RANK_0, "sh",
              str(tmp_path))
    assert r.returncode == 3
    assert r.stderr.splitlines()[-1] == f"pmrun: exit codes [{host}] 0,3"


@pytest.mark.parametrize("name", ["-print-rank-map", "--display-map"])
def test_print_rank_map_names_each_nodes_ranks_before_the_job(pmrun: Run, name: str) -> None:
    host = os.uname().nodename
    r = pmrun(name, "--local-nodes", "3", "-ppn", "2", "-n", "5", "sh", "-c",
              "echo $PMI_RANK >&2")
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and lines[:3] == [f"pmrun: rank map: node 0 ({host}): 0-1",
                                               f"pmrun: rank map: node 1 ({host}): 2-3",
                                               f"pmrun: rank map: node 2 ({host}): 4"], lines
    assert sorted(lines[3:]) == ["0", "1", "2", "3", "4"]  # the map comes before any rank's
    r = pmrun(name, "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, f"pmrun: {name} is for an MPI job's "
                                           "ranks, not for task ensembles\n")


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_one_node_rank_map_and_timestamps_are_the_same_on_both_paths(
        pmrun: Run, quick: str) -> None:
    """-print-rank-map and --timestamp-output on one node: the quick path takes them, and
    says the map once even when it hands the job over (here at --timeout)."""
    assert quick_parse(["-print-rank-map", "--timestamp-output", "prog"], {}) is not None
    host = os.uname().nodename
    r = pmrun("-print-rank-map", "--timestamp-output", "--timeout", "1", "-n", "2", "sh", "-c",
              "echo up; exec sleep 60", env={"PM_QUICK": quick})
    lines = r.stderr.splitlines()
    assert r.returncode == 124 and lines[0] == f"pmrun: rank map: node 0 ({host}): 0-1", r
    assert [ln for ln in lines if "rank map" in ln] == lines[:1], lines
    assert [re.sub(r"^\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] ", "", ln)
            for ln in r.stdout.splitlines()] == ["up", "up"], r.stdout


PMI1_USIZE = """
import os, socket
f = socket.socket(fileno=int(os.environ["PMI_FD"])).makefile("rwb", buffering=0)
def ask(line):
    f.write(line.encode())
    return f.readline().decode().split()
ask("cmd=init pmi_version=1 pmi_subversion=1\\n")
print(dict(w.split("=", 1) for w in ask("cmd=get_universe_size\\n"))["size"])
ask("cmd=finalize\\n")
"""


@pytest.mark.parametrize(("args", "size"), [
    ((), "2"), (("-usize", "7"), "7"), (("--universe-size=9",), "9"),
    (("-usize", "INFINITE"), "-1"),
    (("-usize", "SYSTEM", "--local-nodes", "2"), str(2 * len(os.sched_getaffinity(0)))),
])
def test_universe_size_reaches_the_ranks(pmrun: Run, args: tuple[str, ...], size: str) -> None:
    r = pmrun(*args, "-n", "2", "python", "-c", PMI1_USIZE)
    assert (r.returncode, r.stdout) == (0, f"{size}\n{size}\n"), r.stderr


@pytest.mark.mpi
def test_mpi_universe_size_is_usize(pmrun: Run) -> None:
    show = "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_attr(MPI.UNIVERSE_SIZE))"
    r = pmrun("-usize", "5", "-n", "2", "python", "-c", show)
    assert (r.returncode, r.stdout) == (0, "5\n5\n"), r.stderr


#: Hydra's placement on a host list, as Hydra runs it over real sshds: each entry takes
#: its count of ranks (host:N, a file's slots=N; 1 without one), entry after entry, round
#: and round until -n are placed; a host named again is one node (one agent) dealt to at
#: each of its places; without -n, as many ranks as the counts add up to.
#: (options, the host file's text or "", each node's ranks)
HYDRA_PLACEMENTS = [
    (["-hosts", "pm7h1,pm7h2:3", "-n", "5"], "", [("pm7h1", "0,4"), ("pm7h2", "1-3")]),
    (["-hosts", "pm7h1,pm7h2", "-n", "4"], "", [("pm7h1", "0,2"), ("pm7h2", "1,3")]),
    (["-hosts", "pm7h1,pm7h2,pm7h3,pm7h4:2", "-n", "8"], "",
     [("pm7h1", "0,5"), ("pm7h2", "1,6"), ("pm7h3", "2,7"), ("pm7h4", "3-4")]),
    (["-hosts", "pm7h1,pm7h2,pm7h1,pm7h2", "-n", "4"], "",
     [("pm7h1", "0,2"), ("pm7h2", "1,3")]),
    (["-f", "hf"], "pm7h1\npm7h2\npm7h3\n", [("pm7h1", "0"), ("pm7h2", "1"), ("pm7h3", "2")]),
    (["-hosts", "pm7h1,pm7h3"], "", [("pm7h1", "0"), ("pm7h3", "1")]),
    (["-f", "hf"], "pm7h1:2\npm7h2:1\npm7h3\n",
     [("pm7h1", "0-1"), ("pm7h2", "2"), ("pm7h3", "3")]),
    (["-machinefile", "hf"], "pm7h1 slots=2\npm7h2\n", [("pm7h1", "0-1"), ("pm7h2", "2")]),
    (["-f", "hf", "-n", "5"], "pm7h1\npm7h2\npm7h1\n", [("pm7h1", "0,2-3"), ("pm7h2", "1,4")]),
    (["-hosts", "pm7h1,pm7h2,pm7h1"], "", [("pm7h1", "0,2"), ("pm7h2", "1")]),
    # MPMD: the programs' ranks dealt on from where the last one's ended.
    (["-hosts", "pm7h1,pm7h2", "-n", "3", "x", ":", "-n", "3"], "",
     [("pm7h1", "0,2,4"), ("pm7h2", "1,3,5")]),
    # -order-nodes sorts the entries by their counts (a host named again: each entry).
    (["-order-nodes", "ASCENDING", "-hosts", "pm7h1,pm7h2:2,pm7h1:3", "-n", "7"], "",
     [("pm7h1", "0,3-6"), ("pm7h2", "1-2")]),
    (["-skip-launch-node", "-hosts", f"pm7h1,{os.uname().nodename},pm7h2,pm7h1", "-n", "4"],
     "", [("pm7h1", "0,2-3"), ("pm7h2", "1")]),
]


@pytest.mark.parametrize(("argv", "hostfile", "nodes"), HYDRA_PLACEMENTS,
                         ids=[" ".join(a) + (f" [{f.strip()}]" if f else "")
                              for a, f, _ in HYDRA_PLACEMENTS])
def test_ranks_are_dealt_to_the_host_list_as_hydra_deals_them(
        pmrun: Run, tmp_path: Path, argv: list[str], hostfile: str,
        nodes: list[tuple[str, str]]) -> None:
    (tmp_path / "hf").write_text(hostfile)
    r = pmrun("--display-map", "--do-not-launch", *argv, "true", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert r.stderr.splitlines() == [f"pmrun: rank map: node {i} ({host}): {ranks}"
                                     for i, (host, ranks) in enumerate(nodes)]


def test_hydras_host_file_variable_deals_as_f(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "hf").write_text("pm7h1\npm7h2:2\n")
    r = pmrun("--display-map", "--do-not-launch", "true",
              env={"HYDRA_HOST_FILE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["pmrun: rank map: node 0 (pm7h1): 0",
                                     "pmrun: rank map: node 1 (pm7h2): 1-2"]
    r = pmrun("--display-map", "--do-not-launch", "-n", "4", "true",
              env={"I_MPI_HYDRA_HOST_FILE": str(tmp_path / "hf")})
    assert r.stderr.splitlines() == ["pmrun: rank map: node 0 (pm7h1): 0,3",
                                     "pmrun: rank map: node 1 (pm7h2): 1-2"]


@pytest.mark.parametrize(("argv", "nodes"), [
    # -ppn wins over the counts (each host once: a host named again is one node).
    (["-ppn", "2", "-hosts", "a,b,a,b", "-n", "4"], [("a", "0-1"), ("b", "2-3")]),
    (["-ppn", "2", "-hosts", "a,b:3"], [("a", "0-1"), ("b", "2-3")]),
    # So do -m (--distribution, --map-by node), --map-by and -N (srun's layout).
    (["-m", "cyclic", "-hosts", "a,b:3", "-n", "5"], [("a", "0,2,4"), ("b", "1,3")]),
    (["--map-by", "node", "-hosts", "a,b:3", "-n", "5"], [("a", "0,2,4"), ("b", "1,3")]),
    (["--distribution", "block", "-hosts", "a,b", "-n", "4"], [("a", "0-1"), ("b", "2-3")]),
    (["--map-by", "slot", "-hosts", "a,b", "-n", "4"], [("a", "0-1"), ("b", "2-3")]),
    (["-N", "2", "-hosts", "a,b,c", "-n", "4"], [("a", "0-1"), ("b", "2-3")]),
    # A program's own -host (Open MPI's app context) keeps Open MPI's blocks; a program
    # without one has the job's -hosts, dealt as Hydra deals.
    (["-hosts", "a,b", "-n", "3", "x", ":", "-n", "3", "-host", "c,d"],
     [("a", "0,2"), ("b", "1"), ("c", "3-4"), ("d", "5")]),
    # --rank-by numbers each node's ranks anew (Open MPI's).
    (["--rank-by", "slot", "-hosts", "a,b,a", "-n", "5"], [("a", "0-2"), ("b", "3-4")]),
])
def test_what_places_ranks_otherwise_still_does(pmrun: Run, argv: list[str],
                                               nodes: list[tuple[str, str]]) -> None:
    r = pmrun("--display-map", "--do-not-launch", *argv, "true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"pmrun: rank map: node {i} ({host}): {ranks}"
                                     for i, (host, ranks) in enumerate(nodes)]


def test_a_slurm_allocations_nodes_keep_their_task_slots(pmrun: Run) -> None:
    # -w (-hosts) naming nodes of the allocation: srun's, blocks by the nodes' task slots.
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_TASKS_PER_NODE": "2(x4)"}
    r = pmrun("--display-map", "--do-not-launch", "-w", "n[2-3]", "-n", "8", "true", env=env)
    assert r.stderr.splitlines() == ["pmrun: rank map: node 0 (n2): 0-3",
                                     "pmrun: rank map: node 1 (n3): 4-7"], r.stderr


#: The ranks' directories (Hydra's -wdir and its other spellings, Open MPI's --path and
#: --prefix): none of them needs to be on this machine when the ranks run on others.
RANKS_DIRS = ["-wdir", "--wd", "-gwdir", "--chdir", "--cwd", "-D", "--path", "--prefix"]


@pytest.mark.parametrize("opt", RANKS_DIRS)
def test_a_directory_of_the_ranks_on_other_hosts_is_theirs_to_have(
        opt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for where, environ in ((["-hosts", "nodeA,nodeB"], {}),
                           (["-f", "hf"], {}),
                           ([], {"HYDRA_HOST_FILE": "hf"}),
                           (["-hosts", "localhost", "-n", "1", "x", ":", "-host", "nodeB"], {}),
                           ([], {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]"}),
                           (["--agents", "agents"], {}),
                           (["-rf", "rf"], {})):
        (tmp_path / "hf").write_text("nodeA\nnodeB\n")
        (tmp_path / "agents").write_text("")
        (tmp_path / "rf").write_text("rank 0=nodeA\n")
        parsed = options.parse([*where, opt, "/srv/scratch", "-n", "1", "pwd"], environ)
        value = parsed.values.get("wdir") or parsed.values.get("genv") or \
            parsed.sections[-1].values.get("wdir")
        assert "/srv/scratch" in str(value), (where, environ)
        # A relative one from pmrun's directory, as Hydra makes it.
        parsed = options.parse([*where, opt, "scratch", "-n", "1", "pwd"], environ)
        value = parsed.values.get("wdir") or parsed.values.get("genv") or \
            parsed.sections[-1].values.get("wdir")
        assert str(tmp_path / "scratch") in str(value), (where, environ)


@pytest.mark.parametrize("opt", RANKS_DIRS)
def test_a_directory_of_the_ranks_here_is_checked_here(opt: str) -> None:
    # Every rank on this machine: refused before anything starts, on both paths.
    name = os.uname().nodename
    for where, environ in (([], {}), (["-hosts", "localhost"], {}),
                           (["-hosts", f"{name}:2,localhost"], {}), (["--local-nodes", "2"], {}),
                           ([], {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": name})):
        argv = [*where, opt, "/no/such/dir", "-n", "1", "true"]
        with pytest.raises(UsageError, match=f"^{opt} /no/such/dir: no such directory$"):
            options.parse(argv, environ)
    # An ensemble's tasks' (-S hosts too): as ever.
    if opt not in ("--path", "--prefix"):  # (an MPI job's only)
        with pytest.raises(UsageError, match=f"^{opt} /no/such/dir: no such directory$"):
            options.parse(["-S", "nodeA", opt, "/no/such/dir", "echo", ":::", "a"], {})


def test_a_node_without_the_wdir_says_so_in_one_line(pmrun: Run, tmp_path: Path) -> None:
    # Hosts that are not this machine (agents here, through the exec launcher): the
    # -wdir is looked for on each node, and the first rank that cannot start there is
    # named with its node and host, the job's status 127 (not started); ./prog is not
    # said to be missing from a directory that is not there.
    for prog in ("pwd", "./prog"):
        r = pmrun("--launcher-exec", "env {command}", "-iface", "lo", "-hosts", "nodeA,nodeB",
                  "-wdir", "/no/such/dir", "-n", "2", prog)
        assert (r.returncode, r.stderr) == (
            127, f"pmrun: rank 0 (node 0, nodeA) could not start: {prog}: its working "
                 "directory /no/such/dir: no such directory\n")
    (tmp_path / "afile").write_text("")
    r = pmrun("--launcher-exec", "env {command}", "-iface", "lo", "-hosts", "nodeA,nodeB",
              "-wdir", "afile", "-n", "2", "pwd", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (
        127, f"pmrun: rank 0 (node 0, nodeA) could not start: pwd: its working directory "
             f"{tmp_path / 'afile'}: not a directory\n")
    # Where it is, it is each rank's (a relative one from pmrun's directory).
    (tmp_path / "sub").mkdir()
    r = pmrun("--launcher-exec", "env {command}", "-iface", "lo", "-hosts", "nodeA,nodeB",
              "-wdir", "sub", "-n", "2", "pwd", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, f"{tmp_path / 'sub'}\n" * 2), r.stderr


def test_a_node_without_a_count_counts_the_job_s_ranks_on_it(pmrun: Run) -> None:
    # The universe size: a (named twice) has 2 slots, b none: the one rank dealt to it.
    r = pmrun("--launcher-exec", "env {command}", "-iface", "lo", "-hosts", "a,b,a,c", "-n",
              "2", "python", "-c", PMI1_USIZE)
    assert (r.returncode, r.stdout) == (0, "3\n3\n"), r.stderr


@pytest.mark.parametrize(("order", "nodes"), [("DESCENDING", ["b", "c", "a"]),
                                              ("up", ["a", "c", "b"])])
def test_order_nodes_sorts_the_hosts_by_their_slots(pmrun: Run, order: str,
                                                    nodes: list[str]) -> None:
    r = pmrun("-order-nodes", order, "-hosts", "a:1,b:3,c:2", "--launcher-exec",
              "env {command}", "-iface", "lo", "-print-rank-map", "true")
    assert r.returncode == 0, r.stderr
    counts = {"a": 1, "b": 3, "c": 2}
    first, want = 0, []
    for i, host in enumerate(nodes):
        last = first + counts[host] - 1
        want.append(f"pmrun: rank map: node {i} ({host}): "
                    + (f"{first}-{last}" if last > first else f"{first}"))
        first = last + 1
    assert r.stderr.splitlines() == want


def test_iface_is_an_interface_of_this_machine_or_an_address(pmrun: Run) -> None:
    r = pmrun("-iface", "nosuch0", "true")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("pmrun: -iface nosuch0: no such interface here (lo")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    # Used by every agent of the tree (here: agents started through the exec launcher).
    r = pmrun("--launcher-exec", "env {command}", "-hosts", "a,b", "-iface", "lo", "-n", "2",
              "sh", "-c", "echo $PMI_RANK")
    assert (r.returncode, sorted(r.stdout.split())) == (0, ["0", "1"]), r.stderr
    # Hydra's -localhost: the head's address, or a name for it.
    r = pmrun("--launcher-exec", "env {command}", "-hosts", "a,b", "-localhost", "localhost",
              "-n", "2", "sh", "-c", "echo $PMI_RANK")
    assert (r.returncode, sorted(r.stdout.split())) == (0, ["0", "1"]), r.stderr
    r = pmrun("-localhost", "no-such-host.invalid", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: -localhost no-such-host.invalid: not an "
                                           "address, and no address for that name here\n")


#: A good value for every option the quick path takes (key -> argv words after the option).
GOOD_VALUE: dict[str, list[str]] = {
    "n": ["3"], "ppn": ["2"], "genv": ["A=1"], "env": ["B", "2"], "env_mode": ["HOME,PATH"],
    "wdir": ["/"], "prepend": ["%h %r: "], "output": ["o.%r"], "error": ["e.%j"],
    "output_filename": ["od"],
    "fanout": ["4"], "timeout": ["2.5"], "mpi": ["pmix"], "kvs": ["socket"],
    "export": ["PATH,A=1"], "N": ["1"], "nodes": ["1"], "bind_to": ["core:2"],
    "cpu_bind": ["verbose,map_cpu:1,0"], "cpus_per_task": ["2"], "map_by": ["slot:PE=2"],
    "distribution": ["cyclic"], "universe_size": ["6"],
    "hosts": ["localhost"], "stdin": ["none"], "display": ["map,bind"],
    "flux_env": ["A=1"], "prefix": ["/usr"], "exe_path": ["/usr/bin"], "cpu_list": ["0"],
    "hint": ["multithread"], "job_name": ["myjob"], "personality": ["ompi"],
    "output_from": ["0"], "stream_buffering": ["0"],
}
#: ... where an option's spelling takes other words than its key's others (srun's -t).
GOOD_FOR_NAME = {"-t": ["2:30"], "--time": ["1-2:03:04"], "--time-limit": ["1.5h"],
                 "-demux": ["select"], "-topolib": ["hwloc"], "--unset-env": ["A"],
                 "-unset-env": ["A"], "-genvexcl": ["A,B"]}
QUICK = [(opt, name) for opt in OPTIONS if opt.quick for name in opt.names]


@pytest.mark.parametrize(("opt", "name"), QUICK, ids=[n for _, n in QUICK])
def test_what_the_quick_path_takes_means_the_same_to_the_full_parser(
        opt: options.Opt, name: str, tmp_path: Path) -> None:
    if opt.key == "hostfile":
        (tmp_path / "hosts").write_text("localhost\n")
        words = [str(tmp_path / "hosts")]
    elif opt.key == "tune":
        (tmp_path / "tune").write_text("btl = self\n")
        words = [str(tmp_path / "tune")]
    elif name == "--env-file":
        (tmp_path / "rules").write_text("A=1\n")
        words = [str(tmp_path / "rules")]
    else:
        words = ([] if opt.kind in (options.FLAG, options.COUNT) else GOOD_FOR_NAME[name]
                 if name in GOOD_FOR_NAME else GOOD_VALUE[opt.key])
    argv = [name, *words, "prog", "arg"]
    q = quick_parse(argv, dict(os.environ))  # (as the full parser reads it)
    assert q is not None, f"{name} is marked quick but the quick path does not take it"
    from pm.cli_nodes import hosts_of

    opts = full_parse(argv)
    hosts_of(opts)  # (as the full path does: -ppn without -n is ranks a node)
    spec = opts.spec
    (app,) = spec.apps
    mode, names = (app.env_mode, app.envlist) if app.env_mode else (spec.env_mode,
                                                                   spec.genvlist)
    assert (q.n, q.argv, q.genv, q.app_env, q.wdir, q.label, q.prepend, q.timeout, q.output,
            q.error, q.env_mode, q.genvlist, q.merge, q.bind_to, q.map_by, q.report,
            q.timestamp, q.stdin_file, q.unbuffered) == (
        app.n, app.argv, spec.genv, app.env, app.wdir, spec.label, spec.prepend, spec.timeout,
        spec.output, spec.error, mode, names, spec.merge_stderr, spec.bind_to, spec.map_by,
        spec.report_bindings, spec.timestamp, spec.stdin_file, spec.unbuffered)
    from pm.agent.pmix_detect import wants_pmix

    assert q.pmix == wants_pmix(spec.mpi, [app.argv])
    assert q.kvs == spec.kvs
    assert q.usize == (spec.universe_size or 0)


#: pmrun with a defect put into one of its steps (``where``): the quick phase's watch,
#: or the full path's job (``-v``: the traceback is asked for).
DEFECT = """
import sys
where, marker = sys.argv[1], sys.argv[2]
if where.startswith("quick"):
    import pm.quick as entry

    def broken(*args):
        return {}[5]

    if where == "quick":
        entry.QuickStart.watch = broken
    else:  # (-v takes the full path: a defect before that choice, in the command line's read)
        entry.parse = broken
    sys.argv = ["pmrun", *where.split()[1:], "-n", "2", "sleep", marker]
    entry.main()
else:
    import pm.cli_run as entry

    async def broken(opts, started):
        raise RuntimeError("boom")

    entry._main = broken
    sys.argv = ["pmrun", "-v", "-n", "2", "sleep", marker]
    entry.main()
"""


@pytest.mark.parametrize("where", ["quick", "quick -v", "full"])
def test_a_defect_of_pmrun_is_one_line_and_ends_the_ranks(tmp_path: Path, where: str) -> None:
    import sys

    from launch_util import pmrun_env, wait_gone

    marker = {"quick": "31.25", "quick -v": "31.125"}.get(where, "31.5")  # (the ranks' sleep)
    res = subprocess.run([sys.executable, "-c", DEFECT, where, marker], cwd=tmp_path,
                         env=pmrun_env(), capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == options.EXIT_INTERNAL, res.stderr
    last = res.stderr.splitlines()[-1]
    # Where: the innermost frame of pmrun's own (the defect is in code put in from outside).
    assert last.startswith("pmrun: internal error at pm/") and last.endswith(
        "(a defect of pmrun's own; please report it, with the output of -v)"), res.stderr
    if where == "quick":
        assert res.stderr.count("\n") == 1 and "KeyError: 5" in last, res.stderr
    else:  # -v: the traceback first
        assert res.stderr.startswith("Traceback") and ("RuntimeError: boom" in last or
                                                       "KeyError: 5" in last), res.stderr
    wait_gone(f"sleep {marker}", 10)


# ------------------------------------------------------------------ Open MPI's mpirun habits
#: What an Open MPI user types out of habit, on a line the quick path takes too.
MPIRUN_HABITS = ["--allow-run-as-root", "--oversubscribe", "-x", "KEEP", "-x", "SET=a=b",
                 "-x", "UNSET_X", "--mca", "btl", "^ofi", "-gmca", "pml", "ob1", "--pmixmca",
                 "gds", "hash", "--prtemca", "plm_base_verbose", "0", "--tag-output", "-wd",
                 "/", "-np", "2", "prog"]


def test_open_mpi_mpirun_habits_mean_the_same_on_both_paths(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP", "kept")
    monkeypatch.delenv("UNSET_X", raising=False)
    monkeypatch.setattr(option_checks, "_WARNED", set())
    q = quick_parse(MPIRUN_HABITS, os.environ)
    spec = full_parse(MPIRUN_HABITS).spec
    want = {"KEEP": "kept", "SET": "a=b", "OMPI_MCA_btl": "^ofi", "OMPI_MCA_pml": "ob1",
            "PMIX_MCA_gds": "hash", "PRTE_MCA_plm_base_verbose": "0"}
    assert q is not None, "the quick path takes mpirun's spellings"
    assert q.genv == want and spec.genv == want
    assert (q.n, q.label, q.wdir) == (2, True, "/")
    assert (spec.apps[0].n, spec.label, spec.apps[0].wdir) == (2, True, "/")
    # Named once, though both paths read the command line (a job handed over does too).
    assert capfd.readouterr().err == \
        "pmrun: -x UNSET_X: not set in pmrun's environment, so not passed\n"


def test_open_mpi_tune_files_set_the_ranks_parameters_under_the_command_line(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP", "kept")
    monkeypatch.delenv("UNSET_X", raising=False)
    monkeypatch.setattr(option_checks, "_WARNED", set())
    five = tmp_path / "five.conf"  # Open MPI 5's (and 4's --am): NAME = VALUE
    five.write_text("# site tuning\nbtl = tcp,self\nbtl_tcp_if_include=lo\n\n")
    four = tmp_path / "four.conf"  # Open MPI 4's --tune: its -x and --mca options
    four.write_text("-x FOO=1 --mca coll ^hcoll\n-x KEEP -x UNSET_X --pmixmca gds hash\n")
    argv = ["--tune", f"{five},{four}", "--mca", "btl", "self", "--personality", "ompi",
            "-n", "2", "prog"]
    want = {"OMPI_MCA_btl": "self", "OMPI_MCA_btl_tcp_if_include": "lo", "FOO": "1",
            "OMPI_MCA_coll": "^hcoll", "KEEP": "kept", "PMIX_MCA_gds": "hash"}
    q = quick_parse(argv, os.environ)
    assert q is not None and q.genv == want
    assert full_parse(argv).spec.genv == want
    assert capfd.readouterr().err == (f"pmrun: --tune {four}, line 2: -x UNSET_X: not set in "
                                      "pmrun's environment, so not passed\n")
    for text, why in (("what\n", "line 1: NAME = VALUE, or -x, --mca and --pmixmca options"),
                      ("-np 4\n", "line 1: -np: a --tune file holds -x, --mca and --pmixmca "
                                   "options (each with its value), or NAME = VALUE"),
                      ("--mca btl\n", "line 1: --mca needs KEY VALUE")):
        five.write_text(text)
        with pytest.raises(UsageError) as err:
            full_parse(["--am", str(five), "prog"])
        assert str(err.value) == f"--tune {five}, {why}"
    with pytest.raises(UsageError, match="--personality prte: pmrun reads Open MPI's"):
        full_parse(["--personality", "prte", "prog"])


def test_open_mpi_placement_spellings_are_pmrun_s_options() -> None:
    p = options.parse(["-H", "a:2,b", "--npernode", "2", "prog"], {})
    assert (p.values["hosts"], p.values["ppn"]) == ("a:2,b", 2)
    assert options.parse(["--host=a,b", "-npernode", "1", "prog"], {}).values == {
        "hosts": "a,b", "ppn": 1}
    assert options.parse(["--map-by", "ppr:2:node", "prog"], {}).values == {"ppn": 2}
    assert full_parse(["--map-by", "ppr:3:node", "-ppn", "3", "prog"]).spec.ppn == 3
    with pytest.raises(UsageError, match=r"^--map-by ppr:2:node and -ppn 3 disagree$"):
        options.parse(["--map-by", "ppr:2:node", "-ppn", "3", "prog"], {})
    # ppr:N:OBJECT: N per package (numa, l3cache, core, hwthread) of this machine's nodes.
    here = topology.discover(use_hwloc=False)
    assert options.parse(["--map-by", "ppr:2:socket", "prog"], {}).values == {
        "ppn": 2 * len(here.packages), "map_by": "ppr:2:package"}
    assert options.parse(["--map-by", "ppr:1:core", "--local-nodes", "2", "prog"],
                         {}).values["ppn"] == len(here.cores)
    # Open MPI 1-4's spellings.
    for old, new in ((["--bind-to-core"], {"bind_to": "core"}),
                     (["-bind-to-socket"], {"bind_to": "package"}),
                     (["--bycore"], {"map_by": "core"}), (["-byslot"], {"map_by": "slot"}),
                     (["-pernode"], {"ppn": 1}), (["--ppr", "3:node"], {"ppn": 3}),
                     (["-cpus-per-proc", "2"], {"bind_to": "core:2"}),
                     (["--gpmixmca", "a", "1"], {"genv": {"PMIX_MCA_a": "1"}})):
        assert options.parse([*old, "prog"], {}).values == new, old
    with pytest.raises(UsageError, match=r"^--ppr '2:board': Open MPI's N:RESOURCE takes a "
                                         r"count and core, hwthread"):
        options.parse(["--ppr", "2:board", "prog"], {})
    assert options.parse(["-npersocket", "2", "prog"], {}).values == {  # (Open MPI 4's)
        "ppn": 2 * len(here.packages), "map_by": "ppr:2:package"}
    with pytest.raises(UsageError, match=r"^-npersocket 1 is --map-by ppr:1:package: --map-by "
                                         r"core disagrees$"):
        options.parse(["--npersocket", "1", "--map-by", "core", "prog"], {})
    with pytest.raises(UsageError, match=r"^--map-by ppr:2:socket: pmrun counts the package "
                                         r"objects of this machine's nodes only"):
        options.parse(["--map-by", "ppr:2:socket", "-hosts", "a,b", "prog"], {})
    with pytest.raises(UsageError, match=r"^--map-by ppr:1:numa: pmrun counts"):
        options.parse(["--map-by", "ppr:1:numa", "prog"], {"SLURM_JOB_ID": "7"})
    with pytest.raises(UsageError, match=r"^--map-by 'ppr:2:board': Open MPI's "
                                         r"ppr:N:RESOURCE takes a count and core, hwthread"):
        options.parse(["--map-by", "ppr:2:board", "prog"], {})
    # TARGET:PE=N: N cores per rank, bound (Open MPI's hybrid MPI+threads habit).
    assert options.parse(["--map-by", "slot:PE=2", "prog"], {}).values == {
        "map_by": "slot", "bind_to": "core:2"}
    assert options.parse(["--bind-to", "hwthread", "--map-by", "ppr:1:node:pe=4", "prog"],
                         {}).values == {"bind_to": "hwthread:4", "ppn": 1}
    with pytest.raises(UsageError, match=r"^--map-by slot:PE=2 binds 2 cores per rank: "
                                         r"--bind-to numa disagrees$"):
        options.parse(["--map-by", "slot:PE=2", "--bind-to", "numa", "prog"], {})
    with pytest.raises(UsageError, match=r"^--map-by 'core:PE=0': PE= takes a number of "
                                         r"cores per rank$"):
        options.parse(["--map-by", "core:PE=0", "prog"], {})
    with pytest.raises(UsageError, match=r"^-x needs a variable name, not '=1'$"):
        options.parse(["-x", "=1", "prog"], {})
    with pytest.raises(UsageError, match=r"^--mca needs KEY VALUE \(or KEY=VALUE\)$"):
        options.parse(["--mca", "btl"], {})
    with pytest.raises(UsageError, match=r"^--oversubscribe takes no value$"):
        options.parse(["--oversubscribe=1", "prog"], {})


def test_srun_s_and_open_mpi_s_distributions_are_one_option() -> None:
    for argv in (["-m", "cyclic"], ["-mcyclic"], ["--distribution=cyclic"], ["--bynode"],
                 ["--map-by", "node"], ["-m", "cyclic:fcyclic,NoPack"], ["--map-by", "NODE"]):
        assert options.parse([*argv, "prog"], {}).values == {"distribution": "cyclic"}, argv
        assert full_parse([*argv, "prog"]).spec.distribution == "cyclic", argv
        assert quick_parse([*argv, "prog"], {}) is not None, argv  # one node: no matter
    assert full_parse(["-m", "plane=04", "prog"]).spec.distribution == "plane=4"
    # Flux's --taskmap.
    for value, want in (("block", "block"), ("cyclic", "cyclic"), ("cyclic:1", "cyclic"),
                        ("cyclic:3", "plane=3")):
        assert full_parse(["--taskmap", value, "prog"]).spec.distribution == want, value
    with pytest.raises(UsageError, match=r"^--taskmap takes block, cyclic or cyclic:N "
                                         r"\(Flux's\), not 'manual:\[0,2\]'$"):
        options.parse(["--taskmap", "manual:[0,2]", "prog"], {})
    assert full_parse(["-m", "block", "prog"]).spec.distribution == "block"
    assert full_parse(["prog"]).spec.distribution == "block"
    assert options.parse(["--map-by", "node:PE=2", "prog"], {}).values == {
        "distribution": "cyclic", "bind_to": "core:2"}
    # GNU parallel's -m (no value) is still that beside its sources, whatever the command.
    assert options.parse(["-m", "echo", ":::", "a", "b"], {}).values["many_args"] == "-m"
    p = options.parse(["-m", "cyclic", ":::", "a", "b"], {})
    assert p.values["many_args"] == "-m" and p.values["tasks_line"], p.values
    for argv, why in [
            (["--distribution", "round"], r"--distribution takes block, cyclic, plane=N or "
                                          r"arbitrary \(srun's\), not 'round'"),
            (["-m", "plane=0"], r"-m plane=0: plane= takes the ranks a node gets at a time"),
            (["-m", "cyclic:zigzag"], r"-m cyclic:zigzag: after ':' srun takes block, cyclic "
                                      r"or fcyclic"),
            (["--map-by", "node", "-m", "block"], r"--map-by node places ranks cyclically: "
                                                  r"--distribution block disagrees"),
            (["--distribution", "cyclic", "echo", ":::", "a"], r"--distribution is for an MPI "
                                                               r"job's ranks, not for task "
                                                               r"ensembles")]:
        with pytest.raises(UsageError, match="^" + why):
            options.parse([*argv, "prog"] if ":::" not in argv else argv, {})


def test_stdin_all_is_every_rank_on_both_paths(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pm.proto.plan import STDIN_ALL

    for argv in (["--stdin", "all"], ["-i", "all"], ["--input=ALL"]):
        assert full_parse([*argv, "-n", "2", "prog"]).spec.stdin_rank == STDIN_ALL, argv
        q = quick_parse([*argv, "-n", "2", "prog"], {})
        assert q is not None and q.stdin_rank == STDIN_ALL, argv
    # A file named all: file:all, as srun's -i takes a file named 3.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "all").write_text("x\n")
    spec = full_parse(["-i", "file:all", "prog"]).spec
    assert (spec.stdin_rank, spec.stdin_file) == (0, str(tmp_path / "all"))


def test_a_program_s_own_hosts_are_open_mpi_s_app_context() -> None:
    from pm.cli_nodes import nodes_of
    from pm.common.mapping import place_apps, programs_nodes
    from pm.common.nodes import Nodes

    # -hosts before the first program is the job's (Hydra's); -host after one, that
    # program's own (Open MPI's --host of an app context).
    opts = full_parse(["-hosts", "a:2,b", "-n", "1", "x", ":", "-n", "2", "-host", "c,a", "y",
                       ":", "z"])
    assert [app.hosts for app in opts.spec.apps] == [None, "c,a", None]
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    assert (nodes.hosts, nodes.slots) == (["a", "b", "c"], [None, None, None])
    # Each program's hosts and their counts: a program without its own, the job's -hosts
    # list as Hydra deals ranks to it (b without a count takes one a round).
    assert nodes.app_nodes == [([0, 1], [2, 1]), ([2, 0], [None, None]),
                               ([0, 1], [2, 1])]
    # b gets no rank: left out, the others renumbered.
    kept, counts, app_nodes, app_slots = programs_nodes(
        [a.n for a in opts.spec.apps], None, "block", nodes.app_nodes)
    assert (kept, counts, app_nodes) == ([0, 2], [3, 1], [[0], [1, 0], [0]])
    assert place_apps([1, 2, 1], app_nodes, app_slots) == [0, 1, 0, 0]
    with pytest.raises(UsageError, match=r"^a program's own -host and -N or --local-nodes "
                                         r"do not go together$"):
        nodes_of(full_parse(["-N", "1", "-n", "1", "x", ":", "-n", "1", "-host", "a", "y"]))


def test_a_program_s_own_host_file(tmp_path: Path) -> None:
    (tmp_path / "hf").write_text("h2:2\nh3 slots=3\n")
    (tmp_path / "empty").write_text("# nothing\n")
    opts = full_parse(["-n", "1", "x", ":", "-n", "2", "-f", str(tmp_path / "hf"), "y"])
    assert [app.hosts for app in opts.spec.apps] == [None, "h2:2,h3:3"]
    with pytest.raises(UsageError, match=r"^-f .*empty: names no host$"):
        options.parse(["-n", "1", "x", ":", "-f", str(tmp_path / "empty"), "y"], {})


def test_kill_on_bad_exit_spellings() -> None:
    for argv, want in ((["-disable-auto-cleanup"], False), (["--disable-auto-cleanup"], False),
                       (["--enable-recovery"], False),
                       (["-K0"], False), (["--kill-on-bad-exit=0"], False), (["-K"], True),
                       (["-K1"], True), (["--kill-on-bad-exit"], True), (["-auto-cleanup"], True),
                       ([], True)):
        assert full_parse([*argv, "prog"]).spec.kill_on_bad_exit is want, argv
        assert quick_parse([*argv, "prog"], {}) is not None, argv
    with pytest.raises(UsageError, match=r"^--kill-on-bad-exit takes 0 or 1, not '2'$"):
        options.parse(["--kill-on-bad-exit=2", "prog"], {})
    with pytest.raises(UsageError, match=r"^-K takes 0 or 1, not 'x'$"):
        options.parse(["-Kx", "prog"], {})
    with pytest.raises(UsageError, match=r"^-disable-auto-cleanup is for an MPI job's ranks"):
        options.parse(["-disable-auto-cleanup", "echo", ":::", "a"], {})


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_a_failed_rank_leaves_the_others_be_when_asked(pmrun: Run, layout: list[str]) -> None:
    # Hydra's -disable-auto-cleanup (srun's -K0): rank 1 fails, the others end their way,
    # the failure named once and its status the job's; by default the others are killed.
    prog = "[ $PMI_RANK = 1 ] && exit 3; sleep 0.3; echo $PMI_RANK done"
    r = pmrun("-n", "3", *layout, "-disable-auto-cleanup", "sh", "-c", prog)
    assert (r.returncode, sorted(r.stdout.split("\n"))) == (3, ["", "0 done", "2 done"])
    assert r.stderr.splitlines() == [f"pmrun: rank 1 (node 0, {os.uname().nodename}) "
                                     f"exited with code 3"], r.stderr
    # (the others' sleep is long enough that only the kill ends it, on a loaded machine too)
    r = pmrun("-n", "3", *layout, "sh", "-c", prog.replace("sleep 0.3", "sleep 20"))
    assert (r.returncode, r.stdout) == (3, ""), r.stderr


def test_hydras_and_intel_mpis_other_spellings() -> None:
    """Hydra's -machine/-hostlist, -binding, -outfile/-errfile, -debug; Intel MPI's -perhost,
    -rr, -branch-count, -gwdir, -gpath, -genvexcl: the options pmrun knows by other names."""
    o = full_parse(["-hostlist", "a,b", "-binding", "core", "-outfile", "o.%r", "-errfile",
                    "e.%r", "-debug", "-perhost", "3", "-branch-count", "4", "-gwdir", "/",
                    "-gpath", "/usr/bin", "prog"])
    assert (o.hosts, o.spec.bind_to, o.spec.output, o.spec.error, o.verbose, o.spec.ppn,
            o.fanout, o.spec.apps[0].wdir) == ("a,b", "core", "o.%r", "e.%r", 1, 3, 4, "/")
    assert o.spec.genv["PATH"].startswith("/usr/bin:")
    for name in ("-machine", "-machines", "-machinelist"):
        assert full_parse([name, "h1", "prog"]).hosts == "h1"
    assert full_parse(["-rr", "prog"]).spec.ppn == 1
    spec = full_parse(["-genvexcl", "HOME,USER", "prog"]).spec
    assert spec.env_mode == "only" and not {"HOME", "USER"} & set(spec.genvlist), spec.genvlist
    assert "PATH" in spec.genvlist
    with pytest.raises(UsageError, match=r"^-genvexcl takes names of variables, A,B, not 'A B'"):
        options.parse(["-genvexcl", "A B", "prog"], {})


def test_umask_is_the_ranks(pmrun: Run) -> None:
    # Intel MPI's -umask (-gumask): the ranks' mask, in octal; by default pmrun's own.
    r = pmrun("-umask", "0077", "--local-nodes", "2", "-n", "2", "sh", "-c", "umask")
    assert (r.returncode, r.stdout) == (0, "0077\n0077\n"), r.stderr
    assert full_parse(["-gumask", "27", "prog"]).spec.umask == 0o27
    r = pmrun("-umask", "9", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: -umask takes a mask in octal, 022 or 0027, "
                                           "not '9'\n")


def test_no_kill_spellings() -> None:
    for argv, want in ((["--no-kill"], True), (["--no-kill=off"], False),
                       (["--no-kill", "--no-kill=OFF"], False), ([], False)):
        opts = full_parse([*argv, "prog"])
        assert (opts.spec.no_kill, opts.extra.get("no_kill")) == (want, "1" if want else None)
    with pytest.raises(UsageError, match=r"^--no-kill takes =off or nothing, not 'of'$"):
        options.parse(["--no-kill=of", "prog"], {})
    with pytest.raises(UsageError, match=r"^--no-kill is for an MPI job's ranks"):
        options.parse(["--no-kill", "echo", ":::", "a"], {})


@pytest.mark.parametrize("no_kill", [True, False], ids=["no-kill", "default"])
def test_a_lost_node_leaves_the_others_be_with_no_kill(pmrun: Run, no_kill: bool) -> None:
    # srun's --no-kill: node 1's agent is killed (its rank with it), the other nodes' ranks
    # run to their end, the loss named once and its status the job's; by default the
    # others are killed with it.
    # (the others' sleep: long where only the kill may end it, on a loaded machine too)
    prog = ("if [ $PMI_RANK = 1 ]; then kill -9 $PPID; sleep 30; echo 1 lived on; "
            f"else sleep {0.5 if no_kill else 20}; echo $PMI_RANK done; fi")
    r = pmrun("-n", "3", "--local-nodes", "3", *(["--no-kill"] if no_kill else []),
              "sh", "-c", prog)
    assert (r.returncode, sorted(r.stdout.split("\n"))) == (
        255, ["", "0 done", "2 done"] if no_kill else [""]), r.stderr
    assert r.stderr.splitlines() == [f"pmrun: node 1 ({os.uname().nodename}) lost: agent "
                                     "killed by SIGKILL"], r.stderr


def test_the_allocation_s_distribution_is_srun_s_default() -> None:
    assert options.slurm_distribution({"SLURM_DISTRIBUTION": "cyclic"}) == "cyclic"
    assert options.slurm_distribution({"SLURM_DISTRIBUTION": "plane=3"}) == "plane=3"
    assert options.slurm_distribution({"SLURM_DISTRIBUTION": "cyclic:block"}) == "cyclic"
    # Arbitrary with its file (which srun would follow); without it, or none: blocks.
    assert options.slurm_distribution({"SLURM_DISTRIBUTION": "arbitrary",
                                       "SLURM_HOSTFILE": "hf"}) == "arbitrary"
    for env in ({"SLURM_DISTRIBUTION": "arbitrary"}, {"SLURM_DISTRIBUTION": "x"}, {}):
        assert options.slurm_distribution(env) == "block"


def test_hydra_s_rankmap_places_each_rank_on_a_node(pmrun: Run) -> None:
    host = os.uname().nodename
    r = pmrun("--local-nodes", "3", "-rankmap", "1,1,2,0", "--display-map", "sh", "-c",
              'echo "$PMI_RANK $MPI_LOCALRANKID $PMI_SIZE"')
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 0 4", "1 1 4", "2 0 4", "3 0 4"]
    assert r.stderr.splitlines() == [f"pmrun: rank map: node 0 ({host}): 3",
                                     f"pmrun: rank map: node 1 ({host}): 0-1",
                                     f"pmrun: rank map: node 2 ({host}): 2"], r.stderr
    # -n past the list: the list again from its first node 0 (Hydra's).
    r = pmrun("--local-nodes", "2", "-n", "5", "-rankmap", "(vector,[0,1]x1)", "--display-map",
              "true")
    assert (r.returncode, r.stderr.splitlines()) == (0, [
        f"pmrun: rank map: node 0 ({host}): 0,2,4", f"pmrun: rank map: node 1 ({host}): 1,3"])
    for argv, message in [
        (["-rankmap", "1,0"], "-rankmap 1,0: rank 0 is on node 1, the job has 1 host"),
        (["-n", "3", "--local-nodes", "3", "-rankmap", "1,2"],
         "-rankmap 1,2 places 2 ranks: the job has 3"),
        (["-rankmap", "a"], "-rankmap 'a': no node id at 0 (node ids, (FIRST,NODES,RANKS) or "
                            "[...]xN, comma-separated)"),
        (["-rankmap", "0", "-m", "arbitrary"],
         "-rankmap and -m arbitrary both place every rank: give one"),
    ]:
        r = pmrun(*argv, "true", env={"SLURM_HOSTFILE": "x"})
        assert (r.returncode, r.stderr) == (2, f"pmrun: {message}\n"), r.stderr


def test_srun_s_arbitrary_places_ranks_by_its_hostfile(pmrun: Run, tmp_path: Path) -> None:
    host = os.uname().nodename
    (tmp_path / "hf").write_text("+n1\n+n0\n# rank 2:\n+n1\n")
    r = pmrun("--local-nodes", "2", "-m", "arbitrary", "--display-map", "sh", "-c",
              'echo "$PMI_RANK $MPI_LOCALRANKID $PMI_SIZE"', cwd=tmp_path,
              env={"SLURM_HOSTFILE": "hf"})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 0 3", "1 0 3", "2 1 3"]
    assert r.stderr.splitlines() == [f"pmrun: rank map: node 0 ({host}): 1",
                                     f"pmrun: rank map: node 1 ({host}): 0,2"], r.stderr
    # This machine by its names, -n the first ranks (the quick path leaves it to the full).
    (tmp_path / "here").write_text(f"{host}\nlocalhost\n{host}\n")
    r = pmrun("-n", "2", "--distribution=arbitrary", "sh", "-c", 'echo "$PMI_RANK $PMI_SIZE"',
              cwd=tmp_path, env={"SLURM_HOSTFILE": "here"})
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["0 2", "1 2"]), r.stderr
    (tmp_path / "empty").write_text("# none\n")
    for env, argv, message in [
        ({}, [], "-m arbitrary places the ranks on SLURM_HOSTFILE's hosts, a rank a line: "
                 "SLURM_HOSTFILE is not set"),
        ({"SLURM_HOSTFILE": "here"}, ["-n", "4"],
         "-m arbitrary (SLURM_HOSTFILE here) places 3 ranks: the job has 4"),
        ({"SLURM_HOSTFILE": "empty"}, [], "-m arbitrary: SLURM_HOSTFILE empty names no host"),
        ({"SLURM_HOSTFILE": "none"}, [], "-m arbitrary: SLURM_HOSTFILE none cannot be read"),
        ({"SLURM_HOSTFILE": "here"}, ["-rf", "here"],
         "--rankfile and -m arbitrary both place every rank: give one"),
    ]:
        r = pmrun(*argv, "-m", "arbitrary", "true", cwd=tmp_path,
                  env={"SLURM_HOSTFILE": "", **env})
        assert r.returncode == 2 and r.stderr.startswith(f"pmrun: {message}"), r.stderr
        assert r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["quick", "2nodes"])
def test_mpirun_habits_reach_every_rank(pmrun: Run, layout: list[str]) -> None:
    r = pmrun("--allow-run-as-root", "--oversubscribe", "-x", "KEEP", "-x", "UNSET_X",
              "--mca", "btl", "^ofi", "-np", "2", *layout, "sh", "-c",
              'echo "$KEEP $OMPI_MCA_btl ${UNSET_X-unset}"', env={"KEEP": "kept"})
    assert (r.returncode, r.stdout) == (0, "kept ^ofi unset\n" * 2), r.stderr
    assert r.stderr == "pmrun: -x UNSET_X: not set in pmrun's environment, so not passed\n"
    # Open MPI's -q (--quiet, srun's -Q) on an MPI job: no warning.
    for quiet in ("-q", "--quiet", "-Q"):
        r = pmrun(quiet, "-x", "UNSET_X", "-np", "1", *layout, "true")
        assert (r.returncode, r.stderr) == (0, ""), quiet


def test_a_missing_dependency_is_named_with_what_to_install(tmp_path: Path) -> None:
    """An install that lacks one of pmrun's dependencies (here msgpack, which the quick
    path does not need but a job on several nodes does) is not called a defect of pmrun's:
    one line names the package and the interpreter it is missing from."""
    import sys

    code = ("import sys; sys.modules['msgpack'] = None; from pm.quick import main; "
            "sys.argv = ['pmrun', '--local-nodes', '2', '-n', '2', 'true']; sys.exit(main())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == options.EXIT_MISSING, res.stderr
    assert res.stderr.splitlines() == [
        f"pmrun: msgpack, which pmrun needs, is not installed for {sys.executable} (No module "
        f"named 'msgpack'): {sys.executable} -m pip install msgpack (or install pmrun with "
        "its dependencies)"], res.stderr


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_files_on_the_command_line_may_be_pipes(tmp_path: Path, quick: str) -> None:
    """``-f <(...)``, ``-configfile <(...)``, ``-a <(seq 3)``, ``--slf <(...)``: a pipe is a
    file to read (it was refused as 'no such file'), and is read once however often pmrun
    looks at it (the quick check, then the full path)."""
    pm = " ".join(pmrun_argv())
    script = (f"{pm} -n 2 -f <(echo localhost:2) echo host && "
              f"{pm} -configfile <(echo '-n 1 echo config') && "
              f"{pm} -a <(seq 2) echo arg && "
              f"{pm} --slf <(echo :) echo slf ::: 1 && "
              f"{pm} -f {tmp_path} -n 1 true")
    p = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=pmrun_env({"PM_QUICK": quick}),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines() == ["host", "host", "config", "arg 1", "arg 2", "slf 1"], p
    assert (p.returncode, p.stderr) == (2, f"pmrun: -f {tmp_path}: is a directory\n")


@pytest.mark.parametrize(("given", "means"), [("pmi2", "pmi"), ("pmix", "pmix"),
                                              ("pmix_v4", "pmix"), ("none", "none"),
                                              ("auto", "auto")])
def test_sruns_mpi_plugin_names_are_taken(given: str, means: str) -> None:
    assert full_parse([f"--mpi={given}", "true"]).spec.mpi == means
    q = quick_parse(["--mpi", given, "true"], {})
    assert q is not None and q.pmix == (means == "pmix")
    assert refusal(["--mpi=cray_shasta", "true"]) == (
        ("--mpi takes auto, pmix, pmi or none (srun's pmi2, pmix_vN), not 'cray_shasta'",) * 2)


def test_open_mpi_5s_output_and_display_words_are_taken(pmrun: Run, tmp_path: Path) -> None:
    """mpirun 5's --output tag,timestamp / merge-stderr-to-stdout / dir=DIR and --display
    map,bind, as the options pmrun has for them; any other --output value is a file pattern
    (srun's), and -o tag is a file named tag."""
    prog = ["-n", "2", "sh", "-c", "echo out; echo err >&2"]
    r = pmrun("--output", "tag", *prog)
    assert (r.returncode, sorted(r.stdout.splitlines()), sorted(r.stderr.splitlines())) == (
        0, ["[0] out", "[1] out"], ["[0] err", "[1] err"])
    r = pmrun("--output", "merge-stderr-to-stdout,tag,timestamp", *prog)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(re.fullmatch(r"\[\w{3} .+ \d{4}\] \[[01]\] (out|err)", x)
                                   for x in lines), lines
    r = pmrun("--output", f"dir={tmp_path / 'd'}", *prog)
    assert (r.returncode, r.stdout) == (0, "")
    assert (tmp_path / "d" / "1" / "rank.1" / "stderr").read_text() == "err\n"
    r = pmrun("-o", "tag", *prog, cwd=tmp_path)
    assert (r.returncode, (tmp_path / "tag").read_text()) == (0, "out\nout\n")
    r = pmrun("--display", "map,bind", "--map-by", "core:OVERSUBSCRIBE", *prog)
    assert r.returncode == 0
    assert r.stderr.splitlines()[0].startswith("pmrun: rank map: node 0 (")
    assert "rank 1 on " in r.stderr
    for argv, message in ((["--output", "tag,file=x"], "--output tag,file=x: of Open MPI's "
                           "directives pmrun takes tag, timestamp, merge-stderr-to-stdout and "
                           "dir=DIR, not 'file=x' (an --output pattern names files: --output "
                           "out.%r)"),
                          (["--display", "topo"], "--display topo: of Open MPI's "
                           "items pmrun shows map (the rank map), bind (the bindings) and "
                           "allocation (the hosts and their slots), not 'topo'")):
        r = pmrun(*argv, "true")
        assert (r.returncode, r.stderr) == (2, f"pmrun: {message}\n")
    # --display allocation (Open MPI 4's --display-allocation): each host and its slots.
    cpus = len(os.sched_getaffinity(0))
    for argv in (["--display", "allocation"], ["--display-allocation"]):
        r = pmrun(*argv, "-n", "1", "true")
        assert (r.returncode, r.stderr) == (0, f"pmrun: allocation: node 0 "
                                               f"({os.uname().nodename}): {cpus} slots (its "
                                               "CPU threads)\n")
    r = pmrun("--display-allocation", "-hosts", "a:2,b", "--launcher-exec", "env {command}",
              "-n", "3", "true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[:2] == ["pmrun: allocation: node 0 (a): 2 slots",
                                         "pmrun: allocation: node 1 (b): no slot count given"]


def test_fluxs_shell_options_are_not_a_file_pattern(pmrun: Run, tmp_path: Path) -> None:
    """flux run -o cpu-affinity=per-task (off), -o pmi=LIST, -o verbose: as --bind-to core
    (none), --mpi, -v; it was stdout to a file named cpu-affinity=per-task."""
    r = pmrun("-o", "cpu-affinity=per-task", "--report-bindings", "-n", "2", "echo", "x",
              cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "x\nx\n"), r.stderr
    assert sorted(r.stderr.splitlines()) == [f"rank {i} on {os.uname().nodename}: cpus {i}"
                                             for i in range(2)]
    assert list(tmp_path.iterdir()) == []
    assert full_parse(["-o", "pmi=simple,pmix", "x"]).spec.mpi == "pmix"
    assert full_parse(["-o", "cpu-affinity=off", "x"]).spec.bind_to == "none"
    assert full_parse(["-o", "verbose", "x"]).verbose == 1
    assert quick_parse(["-o", "verbose", "x"], {}) is None  # (-v: the full path)
    assert refusal(["-o", "gpu-affinity=per-task", "x"]) == ((
        "-o gpu-affinity=per-task: of Flux's shell options pmrun takes cpu-affinity="
        "per-task|on|off, pmi=LIST and verbose (an -o pattern names files: -o out.%t)"),) * 2
    r = pmrun("-o", "out.%t", "-n", "1", "echo", "y", cwd=tmp_path)  # srun's pattern still
    assert (r.returncode, (tmp_path / "out.0").read_text()) == (0, "y\n")


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_fluxs_templates_in_file_names(pmrun: Run, tmp_path: Path, quick: str) -> None:
    r = pmrun("--output=o.{{id}}.{{name}}.{{ taskid }}", "--error=e.{{jobid.dec}}", "-n", "2",
              "sh", "-c", "echo out; echo err >&2", cwd=tmp_path, env={"PM_QUICK": quick})
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    job = names[0][len("e."):]
    assert names == [f"e.{job}", f"o.{job}.sh.0", f"o.{job}.sh.1"], names
    assert (tmp_path / f"e.{job}").read_text() == "err\nerr\n"
    assert refusal(["--output", "o.{{size}}", "x"]) == ((
        "--output o.{{size}}: {{size}} is not a tag pmrun fills in a file name ({{id}}, "
        "{{name}}, {{taskid}}, {{node.id}}, {{node.name}})"),) * 2


@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_fluxs_env_rules_in_their_order(pmrun: Run, quick: str) -> None:
    env = {"PM_QUICK": quick, "FOO": "bar", "FIZZ": "z", "BAZ": "q"}
    show = ["-n", "1", "sh", "-c", 'echo "X=$X FOO=$FOO FIZZ=$FIZZ BAZ=$BAZ Y=$Y"']
    r = pmrun("--env=X=1", "--env", "-F*", *show, env=env)
    assert (r.returncode, r.stdout) == (0, "X=1 FOO= FIZZ= BAZ=q Y=\n"), r.stderr
    r = pmrun("--env-remove", "*", "--env=FIZZ", "--env", "Y=2", *show, env=env)
    assert (r.returncode, r.stdout) == (0, "X= FOO= FIZZ=z BAZ= Y=2\n"), r.stderr
    r = pmrun("--env-remove", "FOO", "-genvnone", *show, env=env)
    assert (r.returncode, r.stderr) == (2, "pmrun: --env -PATTERN (--env-remove) and -genvall/"
                                           "-genvnone/-genvlist (or srun's --export): give one\n")
    # Flux's rules files (--env-file FILE, --env ^FILE) in their turn, /REGEX/ patterns, and
    # $NAME in a value: the ranks' value so far, else pmrun's.
    rules = Path(pmrun.cwd) / "rules"  # type: ignore[attr-defined]
    rules.write_text("-/^F[IO]/\nX=${BAZ}1\n\n")
    r = pmrun("--env", "Y=$FOO", "--env-file", "rules", "--env", "BAZ=$X.$BAZ$$", *show,
              env=env)
    assert (r.returncode, r.stdout) == (0, "X=q1 FOO= FIZZ= BAZ=q1.q$ Y=bar\n"), r.stderr
    r = pmrun("--env", f"^{rules}", *show, env=env)
    assert (r.returncode, r.stdout) == (0, "X=q1 FOO= FIZZ= BAZ=q Y=\n"), r.stderr
    for args, line in ((["--env-file", "nothere"], "--env-file nothere: No such file or "
                                                   "directory"),
                       (["--env", "^"], "--env ^: name the file of rules"),
                       (["--env", "X=$NOPE"], "--env X=$NOPE: NOPE is not set"),
                       (["--env", "X=a$"], "--env X=a$: a $ that starts no name (write $$ "
                                           "for a $)"),
                       (["--env", "-/[/"], "--env -/[/: unterminated character set at "
                                           "position 0")):
        r = pmrun(*args, *show, env=env)
        assert (r.returncode, r.stderr) == (2, f"pmrun: {line}\n"), args
    # Open MPI 5's --unset-env PATTERN and --set-env NAME=VALUE: the same rules.
    r = pmrun("--unset-env", "F*", "--set-env", "Y=3", *show, env=env)
    assert (r.returncode, r.stdout) == (0, "X= FOO= FIZZ= BAZ=q Y=3\n"), r.stderr
    r = pmrun("--unset-env", "FOO=1", *show, env=env)
    assert (r.returncode, r.stderr) == (2, "pmrun: --unset-env takes a name or a pattern of "
                                           "names, not 'FOO=1'\n")
    # ... and --prepend-env / --append-env NAME[c] VALUE: onto NAME's value here (or so far).
    r = pmrun("--prepend-env", "FOO[:]", "/x", "--append-env", "FOO[:]=/y",
              "--append-env", "Y[,]", "z", *show, env=env)
    assert (r.returncode, r.stdout) == (0, "X= FOO=/x:bar:/y FIZZ=z BAZ=q Y=z\n"), r.stderr
    r = pmrun("--prepend-env", "FOO", "/x", *show, env=env)
    assert (r.returncode, r.stderr) == (2, "pmrun: --prepend-env FOO: give the name and its "
                                           "separator, as NAME[:] VALUE\n")


def test_skip_launch_node_runs_on_the_other_hosts_only(pmrun: Run, tmp_path: Path) -> None:
    # Hydra's -skip-launch-node, Open MPI's --nolocal: this machine in the host list (a
    # login node, a batch job's first node) gets no ranks (the others: agents started
    # through an exec template here).
    here = os.uname().nodename
    (tmp_path / "hosts").write_text(f"{here}:2\nnodeA:2\nnodeB:2\n")
    for flag in ("-skip-launch-node", "--nolocal"):
        r = pmrun(flag, "-f", str(tmp_path / "hosts"), "--launcher-exec", "env {command}",
                  "--display-map", "-n", "4", "true")
        assert r.returncode == 0, r.stderr
        assert [line for line in r.stderr.splitlines() if "rank map" in line] == [
            "pmrun: rank map: node 0 (nodeA): 0-1", "pmrun: rank map: node 1 (nodeB): 2-3"]


def test_wait_after_the_first_rank_ends_as_srun_s(pmrun: Run) -> None:
    # srun's -W N (--wait): N seconds after a rank ended, the ranks still running are
    # ended and named; the job's status a time limit's. A job that ends within them is
    # not touched.
    hang = "if [ $PMI_RANK = 0 ]; then exit 0; fi; exec sleep 30"
    r = pmrun("-W", "1", "-n", "3", "sh", "-c", hang, timeout=20)
    assert (r.returncode, r.stderr) == (124, f"pmrun: rank 0 (node 0, {os.uname().nodename})"
                                             " ended 1 s ago and 2 ranks still ran: ended "
                                             "them (-W, srun's --wait)\n")
    r = pmrun("--wait", "5", "-n", "2", "sh", "-c", "exec sleep 0.$PMI_RANK")
    assert (r.returncode, r.stderr) == (0, "")


#: Values once taken (or run out of memory, or a traceback) and the one line each gets now.
_ODD = [
    (["--ppr", "100000000000000000000:core"], "--ppr '100000000000000000000:core': Open "
     "MPI's N:RESOURCE takes a count and core, hwthread, l3cache, node, numa, package or "
     "socket"),
    (["--cpu-list", "0-100000000000000000000"], "--cpu-list 0-100000000000000000000: no "
     "machine has a CPU 100000000000000000000 (they go up to 65535 at most)"),
    (["--bind-to", "user:0-100000000000000000000"], "--bind-to 'user:0-100000000000000000000'"
     ": no machine has a cpu 100000000000000000000 (they go up to 65535 at most)"),
    (["--bind-to", "user:0x100000000000000000000"], "--bind-to 'user:0x100000000000000000000'"
     ": bad repeat count in '0x100000000000000000000' (1 to 16777216)"),
    (["-rankmap", "[0]x100000000000000000000"], "-rankmap '[0]x100000000000000000000': more "
     "than 16777216 ranks (node ids, (FIRST,NODES,RANKS) or [...]xN, comma-separated)"),
    (["--fanout", "100000000000000000000", "--local-nodes", "2"],
     "--fanout 100000000000000000000: more than pmrun can run (at most 16777216)"),
    (["--ppr", "²:core"], "--ppr '²:core': Open MPI's N:RESOURCE takes a count and core, "
     "hwthread, l3cache, node, numa, package or socket"),
    (["--timeout", "²m"], "--timeout takes seconds (or 2m, 1h30m...), not '²m'"),
    (["-n", "2_0"], "-n takes a whole number, not '2_0'"),
    (["-n", " 2"], "-n takes a whole number, not ' 2'"),
    (["-hosts", "localhost:2:3"], "-hosts: bad slot count '2:3' in 'localhost:2:3'"),
    (["--bind-to", "core:"], "--bind-to 'core:': nothing after ':' (a count of cores per "
     "rank, e.g. core:2, or 'overload-allowed')"),
]


@pytest.mark.parametrize(("args", "line"), _ODD, ids=[" ".join(a) for a, _ in _ODD])
def test_odd_values_are_one_line(pmrun: Run, args: list[str], line: str) -> None:
    r = pmrun(*args, "-n", "1", "true") if "-n" not in args else pmrun(*args, "true")
    assert (r.returncode, r.stderr.splitlines()) == (2, [f"pmrun: {line}"])


def test_odd_simulation_values_and_files_are_one_line(pmrun: Run, tmp_path: Path) -> None:
    for args, line in (
            (["--sim-value-size", "100000000000000000000"],
             "--sim-value-size takes 1 to 65536, not 100000000000000000000"),
            (["--sim-ranks-per-node", "10000000"],
             "--sim-ranks-per-node 10000000 on 2 nodes: more than 16777216 ranks")):
        r = pmrun("--sim-ranks-per-node", "2", *args, "--local-nodes", "2")
        assert (r.returncode, r.stderr.splitlines()) == (2, [f"pmrun: {line}"]), args
    rankfile = tmp_path / "rf"
    rankfile.write_bytes(b"\xff rank 0=a slot=0\n")
    r = pmrun("-rf", str(rankfile), "-n", "1", "true")
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        f"pmrun: rankfile {rankfile} cannot be read ('utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte)"])
    agents = tmp_path / "agents"
    agents.write_bytes(b"\xff\n")
    r = pmrun("--agents", str(agents), "-n", "1", "true")
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        f"pmrun: --agents {agents}: not text ('utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte)"])
    r = pmrun("--mem-settle", "-1", "true", ":::", "a")
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        "pmrun: --mem-settle takes seconds (or 2m, 1h30m...), not '-1'"])
