"""The table of pmrun's options, in the order ``pmrun --help`` lists them within
each group (:mod:`pm.options.help`): an MPI job's (process placement, environment,
input and output, launch, the agent tree), then task ensembles'
(:mod:`pm.options.task_options`), then the others; and each option by its spellings.
"""

from __future__ import annotations

from pm.options.checks import (
    MOST_LOCAL_NODES,
    MOST_RANKS,
    acctg_freq,
    choice,
    env_names,
    job_name,
    mpi_kind,
    number,
    personality,
    ranks_directory,
    readable_file,
    run_timeout,
    signal_before_end,
    signal_list,
    slurm_time,
    slurmd_debug,
    text,
    umask_value,
    universe,
    wait_seconds,
    whole,
    writable_file,
)
from pm.options.checks_env_io import (
    LABEL,
    RLIMIT_NAMES,
    display_items,
    excluded_names,
    flux_env_file,
    flux_env_rule,
    open_mode,
    out_pattern,
    output_from,
    prepend_pattern,
    report_to,
    srun_export,
    stdin_rank,
    tune_files,
)
from pm.options.checks_placement import (
    _ppr,
    bind_to,
    cpu_freq,
    cpu_list,
    distribution,
    gpus_count,
    hostfile,
    hosts,
    iface,
    local_address,
    map_by,
    mem_bind,
    memory_kinds,
    order_nodes,
    rank_by,
    rankmap,
    srun_cpu_bind,
    srun_hint,
    taskmap,
)
from pm.options.model import (
    ACTION,
    COUNT,
    ENV,
    EXPORT,
    FILE,
    FLAG,
    IO,
    LAUNCH,
    MISC,
    PAIR,
    PLACE,
    TREE,
    Opt,
)
from pm.options.task_options import ENSEMBLE_OPTIONS

#: Launchers (how agents start on hosts), with Hydra's names for them.
LAUNCHERS = ("local", "fork", "ssh", "rsh", "slurm", "exec", "persistent", "persist")


#: An MPI job's options: process placement, environment, input and output, launch,
#: the agent tree.
JOB_OPTIONS = (
    # Process placement
    Opt("-n -np --np --ntasks", "n", whole(1, MOST_RANKS), metavar="N", local=True, quick=True,
        group=PLACE,
        help="number of ranks of the program (default 1)"),
    Opt("-ppn --npernode -npernode --ntasks-per-node --tasks-per-node -perhost", "ppn",
        whole(1, MOST_RANKS), metavar="N",
        quick=True, group=PLACE,
        help="ranks per node (fills each node with N ranks, then wraps)"),
    Opt("-rr", "ppn", kind=FLAG, const=1, quick=True, group=PLACE,
        help="Intel MPI's: one rank a host in turn, round robin (-ppn 1)"),
    Opt("-N", "N", whole(0, MOST_RANKS), metavar="N", group=PLACE, quick=True,
        help="the first N hosts only (srun's and Flux's -N; Open MPI's -N is -ppn); of a "
             "task ensemble, the arguments each task takes (GNU parallel's -N)"),
    Opt("--nodes", "nodes", whole(1, MOST_RANKS), metavar="N", group=PLACE, quick=True,
        help="-N of an MPI job: its ranks on the first N hosts"),
    Opt("-hosts -host --host -H -w --nodelist -hostlist -machine -machines -machinelist",
        "hosts", hosts, metavar="H1,H2[:SLOTS]",
        group=PLACE, quick=True,
        help="hosts to run on, the ranks dealt to them in order, SLOTS at a time (1 without), "
             "round and round (Hydra's); node[01-04] ranges are expanded; inside a Slurm "
             "allocation, nodes of it are reached through Slurm (srun's -w)"),
    Opt("-order-nodes --order-nodes", "order_nodes", order_nodes, metavar="ASCENDING",
        group=PLACE,
        help="Hydra's: the hosts in the order of their slots, fewest first (DESCENDING: most "
             "first); a host without a count has one"),
    Opt("-skip-launch-node --skip-launch-node --nolocal -nolocal", "skip_launch", kind=FLAG,
        group=PLACE, help="no ranks on this machine, only on the other hosts given (Hydra's "
                          "-skip-launch-node, Open MPI's --nolocal)"),
    Opt("--exclude", "exclude", hosts, metavar="HOSTLIST", group=PLACE,
        help="inside a Slurm allocation, run on its nodes but these (srun's --exclude)"),
    Opt("-f -hostfile --hostfile -machinefile --machinefile", "hostfile", hostfile,
        metavar="FILE", group=PLACE, quick=True,
        help='hosts from FILE ("host", "host:4" or "host slots=4" per line)'),
    Opt("-usize --universe-size", "universe_size", universe, metavar="N", group=PLACE,
        quick=True,
        help="MPI universe size the ranks are told (room for MPI_Comm_spawn); SYSTEM: the "
             "slots given, INFINITE: no limit (default: the slots given with the hosts, else "
             "the job's size)"),
    Opt("--bind-to -bind-to -binding", "bind_to", bind_to, metavar="TARGET", quick=True,
        group=PLACE,
        help="none, hwthread, core, l3cache, numa, package, each with :N (N of them per "
             "rank) or :overload-allowed, or user:0+1,2"),
    Opt("--bind-to-core -bind-to-core", "bind_to", kind=FLAG, const="core", group=PLACE,
        help="Open MPI 1-4's: --bind-to core"),
    Opt("--bind-to-socket -bind-to-socket", "bind_to", kind=FLAG, const="package",
        group=PLACE, help="Open MPI 1-4's: --bind-to package"),
    Opt("--cpu-bind --cpu_bind", "cpu_bind", srun_cpu_bind, metavar="[verbose,]TYPE",
        quick=True, group=PLACE,
        help="srun's: none, cores, threads, sockets, ldoms (--bind-to none, core, hwthread, "
             "package, numa), map_cpu:0,2 or mask_cpu:0x3,0xc (a CPU or a mask each rank: "
             "--bind-to user:...); verbose: --report-bindings"),
    Opt("--mem-bind --mem_bind -membind --membind", "mem_bind", mem_bind, metavar="TYPE",
        group=PLACE,
        help="the ranks' NUMA memory: srun's none, local (their CPUs' nodes), rank, "
             "map_mem:0,1 or mask_mem:0x1,0x2 (a node or mask each rank), prefer and verbose "
             "before them; Hydra's firsttouch, bind:NODES, interleave:NODES"),
    Opt("-memory-alloc-kinds --memory-alloc-kinds", "memory_alloc_kinds", memory_kinds,
        metavar="KINDS", group=PLACE,
        help="Hydra's: the memory kinds MPI is asked to support (MPI 4.1's "
             "mpi_memory_alloc_kinds: mpi,system,cuda:device...), given to the ranks as the "
             "PMI job attribute PMI_mpi_memory_alloc_kinds"),
    Opt("--gpus-per-task -g -gpus-per-proc --gpus-per-proc", "gpus_per_task", gpus_count,
        metavar="N", group=PLACE,
        help="N GPUs for each rank: a node's ranks get its GPUs (those CUDA_VISIBLE_DEVICES, "
             "ROCR_VISIBLE_DEVICES... name, else all of them) N at a time, in that variable "
             "(srun's, Flux's -g, Hydra's -gpus-per-proc)"),
    Opt("--hint", "hint", srun_hint, metavar="HINT", quick=True, group=PLACE,
        help="srun's: nomultithread or compute_bound (a rank a core: --bind-to core), "
             "multithread (ranks fill the hardware threads: --bind-to hwthread --map-by "
             "hwthread), memory_bound (ranks spread over the sockets, a core each: --map-by "
             "package --bind-to core); -c N gives each rank N of them"),
    Opt("-c --cpus-per-task --cores-per-task --cpus-per-rank -cpus-per-rank --cpus-per-proc "
        "-cpus-per-proc", "cpus_per_task",
        whole(1), metavar="N", quick=True, group=PLACE,
        help="N cores for each rank, which it is bound to (srun's and Flux's -c, Open MPI "
             "4's --cpus-per-rank: --bind-to core:N)"),
    Opt("--use-hwthread-cpus -use-hwthread-cpus", "hwthread_cpus", kind=FLAG, quick=True,
        group=PLACE,
        help="a rank's CPUs (-c N, --map-by X:PE=N) are hardware threads, not cores (Open "
             "MPI's: --bind-to hwthread:N)"),
    Opt("-npersocket --npersocket", "npersocket", whole(1, MOST_RANKS), metavar="N",
        group=PLACE, help="Open MPI 4's: N ranks per package (--map-by ppr:N:package)"),
    Opt("--ppr -ppr", "map_by", _ppr, metavar="N:OBJECT", group=PLACE,
        help="Open MPI 4's: --map-by ppr:N:OBJECT"),
    Opt("--bycore -bycore", "map_by", kind=FLAG, const="core", group=PLACE,
        help="Open MPI 1-4's: --map-by core"),
    Opt("--byslot -byslot", "map_by", kind=FLAG, const="slot", group=PLACE,
        help="Open MPI 1-4's: --map-by slot"),
    Opt("--pernode -pernode", "ppn", kind=FLAG, const=1, group=PLACE,
        help="Open MPI's: a rank a node (-ppn 1)"),
    Opt("--map-by -map-by", "map_by", map_by, metavar="TARGET", quick=True, group=PLACE,
        help="slot, hwthread, core, l3cache, numa, package; Open MPI's ppr:N:node is -ppn N, "
             "node is --distribution cyclic, and TARGET:PE=N binds N cores per rank "
             "(--bind-to core:N)"),
    Opt("-rf --rankfile -rankfile", "rankfile", readable_file, metavar="FILE", group=PLACE,
        help="Open MPI's: each rank's host and cores from 'rank N=HOST slot=LIST' lines "
             "(--map-by rankfile:file=FILE; HOST +nK: the K-th host given)"),
    Opt("-rankmap --rankmap", "rankmap", rankmap, metavar="IDS", group=PLACE,
        help="Hydra's: each rank's node, its index in the host list (1,1,2,2; "
             "(FIRST,NODES,RANKS) blocks, [...]xN repeats)"),
    Opt("--distribution", "distribution", distribution, metavar="block|cyclic|plane=N",
        quick=True, group=PLACE,
        help="srun's -m: block (default: each node's ranks together), cyclic (a rank a node, "
             "round and round; Open MPI's --map-by node), plane=N (N ranks a node at a "
             "time)"),
    Opt("--bynode -bynode", "distribution", kind=FLAG, const="cyclic", quick=True, group=PLACE,
        help="Open MPI's: --distribution cyclic"),
    Opt("--taskmap", "distribution", taskmap, metavar="block|cyclic[:N]", quick=True,
        group=PLACE, help="Flux's: block, cyclic (--distribution cyclic), cyclic:N "
                          "(--distribution plane=N)"),
    Opt("--report-bindings -report-bindings", "report_bindings", kind=FLAG, quick=True,
        group=PLACE,
        help="print each rank's cpus"),
    Opt("--topology", "topology", kind=FLAG, group=PLACE,
        help="print this node's topology as the agent sees it, and exit"),
    Opt("--number-of-threads", "number_of", kind=FLAG, const="threads", group=PLACE,
        help="print the CPU threads this process may run on, and exit (GNU parallel's)"),
    Opt("--number-of-cores --number-of-cpus", "number_of", kind=FLAG, const="cores",
        group=PLACE, help="print the cores they belong to, and exit (GNU parallel's)"),
    Opt("--number-of-sockets", "number_of", kind=FLAG, const="sockets", group=PLACE,
        help="print the sockets (packages) they belong to, and exit (GNU parallel's)"),
    # Environment
    Opt("-genv", "genv", kind=PAIR, metavar="NAME VALUE", quick=True, group=ENV,
        help="set NAME=VALUE for every rank (also -genv NAME=VALUE)"),
    Opt("-genvall", "env_mode", kind=FLAG, const=("all", []), quick=True, group=ENV,
        help="pass pmrun's whole environment on, over each host's own (default)"),
    Opt("-genvnone", "env_mode", kind=FLAG, const=("none", []), quick=True, group=ENV,
        help="pass nothing but -genv/-env: the ranks get their host's own environment (as "
             "Hydra's: an ssh session's on other hosts, pmrun's here)"),
    Opt("-genvlist", "env_mode", env_names, metavar="A,B", quick=True, group=ENV,
        help="pass only these variables (over each host's own environment)"),
    Opt("-env", "env", kind=PAIR, metavar="NAME VALUE", local=True, quick=True, group=ENV,
        help="set NAME=VALUE for this program's ranks (its MPMD section)"),
    Opt("-envall", "env_mode", kind=FLAG, const=("all", []), local=True, quick=True, group=ENV,
        help="-genvall for this program's ranks"),
    Opt("-envnone", "env_mode", kind=FLAG, const=("none", []), local=True, quick=True,
        group=ENV, help="-genvnone for this program's ranks"),
    Opt("-envlist", "env_mode", env_names, metavar="A,B", local=True, quick=True, group=ENV,
        help="-genvlist for this program's ranks"),
    Opt("--env --env-remove", "flux_env", flux_env_rule, metavar="RULE", quick=True,
        group=ENV,
        help="Flux's: --env VAR=VAL sets VAR for every rank ($NAME and ${NAME} in VAL: the "
             "ranks' value so far, else pmrun's), --env -PATTERN (or --env-remove PATTERN) "
             "passes none of the variables PATTERN matches (a shell pattern, or /REGEX/), "
             "--env PATTERN passes those again, --env ^FILE applies FILE's rules; in the "
             "order given"),
    Opt("-pmi-port --pmi-port", "pmi_port", kind=FLAG, group=ENV,
        help="Hydra's: each rank reaches its node's agent at PMI_PORT (a TCP port on the "
             "node's loopback) as rank PMI_ID, not through an inherited socket (PMI_FD): for "
             "a program started through something that closes inherited descriptors (sudo, "
             "a wrapper's subprocess); a client says its rank first (PMI-1's initack), then "
             "speaks PMI-1, PMI-2 or pm.client's protocol"),
    Opt("-umask -gumask", "umask", umask_value, metavar="MASK", group=ENV,
        help="Intel MPI's: the ranks' file mode creation mask (by default pmrun's own, on "
             "every host, as srun passes it on)"),
    Opt("-genvexcl", "flux_env", excluded_names, metavar="A,B", quick=True, group=ENV,
        help="Intel MPI's: pass none of these variables (--env-remove for each)"),
    Opt("--env-file", "flux_env", flux_env_file, metavar="FILE", quick=True, group=ENV,
        help="Flux's: the --env rules of FILE, one a line (also --env ^FILE), in their turn"),
    Opt("--unset-env -unset-env", "flux_env", flux_env_rule, metavar="PATTERN", quick=True,
        group=ENV, help="Open MPI 5's: --env-remove PATTERN ('foo*': every name starting foo)"),
    Opt("--prefix -prefix", "prefix", ranks_directory, metavar="DIR", quick=True,
        group=ENV,
        help="Open MPI's: DIR/bin first on the ranks' PATH, DIR/lib on their "
             "LD_LIBRARY_PATH (an MPI installed there on every host)"),
    Opt("--path -path -gpath", "exe_path", ranks_directory, metavar="DIR", quick=True,
        group=ENV,
        help="Open MPI's: DIR first on the ranks' PATH, where their programs are looked "
             "for"),
    Opt("-x --set-env -set-env", "genv", kind=EXPORT, metavar="NAME[=VALUE]", quick=True,
        group=ENV,
        help="pass NAME with its value here (Open MPI's mpirun -x; an unset NAME is named and "
             "skipped), or set it to VALUE"),
    Opt("--prepend-env -prepend-env --prepend-envar", "genv", kind=PAIR, const="prepend",
        metavar="NAME[c] VALUE", group=ENV,
        help="Open MPI 5's: VALUE, c and NAME's value here for every rank (NAME[:] /opt/lib)"),
    Opt("--append-env -append-env --append-envar", "genv", kind=PAIR, const="append",
        metavar="NAME[c] VALUE", group=ENV,
        help="Open MPI 5's: NAME's value here, c and VALUE for every rank"),
    Opt("--mca -mca --gmca -gmca", "genv", kind=PAIR, const="OMPI_MCA_", metavar="KEY VALUE",
        quick=True, group=ENV, help="set Open MPI's parameter KEY for every rank "
                                    "(OMPI_MCA_KEY=VALUE, as mpirun --mca)"),
    Opt("--tune --am", "tune", tune_files, metavar="FILE[,FILE]", quick=True,
        group=ENV,
        help="Open MPI's: files of parameters for every rank, a NAME = VALUE line each "
             "(OMPI_MCA_NAME=VALUE), or lines of -x, --mca and --pmixmca options; those given "
             "on the command line win"),
    Opt("--personality", "personality", personality, metavar="ompi", quick=True, group=ENV,
        help="Open MPI 5's: ompi, the command line pmrun reads anyway"),
    Opt("--pmixmca -pmixmca --gpmixmca -gpmixmca", "genv", kind=PAIR, const="PMIX_MCA_",
        metavar="KEY VALUE",
        quick=True, group=ENV,
        help="set PMIx's parameter KEY for every rank (PMIX_MCA_KEY=VALUE)"),
    Opt("--stream-buffering -stream-buffering", "stream_buffering", choice("0", "1", "2"),
        metavar="0|1|2", quick=True, group=ENV,
        help="Open MPI's: its ranks' stdout and stderr unbuffered (0), line buffered (1) or "
             "fully buffered (2) from MPI_Init on (its MCA parameter, Open MPI 5's and 4's)"),
    Opt("--prtemca -prtemca", "genv", kind=PAIR, const="PRTE_MCA_", metavar="KEY VALUE",
        quick=True, group=ENV,
        help="Open MPI 5's parameter KEY of its runtime, which pmrun is: set for every rank "
             "(PRTE_MCA_KEY=VALUE) and meaning nothing to pmrun"),
    Opt("--export", "export", srun_export, metavar="ALL|NONE|A[=V],...", quick=True,
        group=ENV, help="srun's: ALL (-genvall), NONE (only PATH, HOME, USER, LANG, TERM), or "
                        "only these variables, A=V setting A (ALL,A=V: every variable, and A "
                        "set); with NONE or names, nothing of the hosts' own environment"),
    Opt("-wdir --wdir -dir -wd --wd --workdir -D --chdir --cwd -gwdir", "wdir",
        ranks_directory,
        metavar="DIR", local=True,
        quick=True, group=ENV, help="working directory of the program's ranks, on their "
        "hosts (of tasks: every task's)"),
    # Input and output
    Opt("-l --label -prepend-rank --tag-output --label-io", "prepend", kind=FLAG, const=LABEL,
        quick=True,
        group=IO, help="prefix every output line with [rank]"),
    Opt("-prepend-pattern", "prepend", prepend_pattern, metavar="PATTERN", quick=True,
        group=IO, help="prefix every output line with PATTERN: %r rank, %h host, %p node "
                       "number, %g job (0; spawned jobs count on), %% a percent sign"),
    Opt("--output -outfile-pattern -outfile -o", "output", out_pattern, metavar="PATTERN",
        quick=True, group=IO,
        help="write the ranks' stdout to files: %r (or %t) is the rank, %h (%N) "
                       "its host, %p (%n) its node's number, %j the job id, %x its name (-J), "
                       "%u the user, %% a percent sign; without %r all ranks share the file. "
                       "Spawned job J's "
                       "ranks: %j is the id and sJ, else .sJ ends a name with %r. Open MPI "
                       "5's --output tag,timestamp,merge-stderr-to-stdout,dir=DIR is taken "
                       "as -l, --timestamp-output, --merge-stderr-to-stdout, "
                       "--output-filename DIR"),
    Opt("--error -errfile-pattern -errfile -e", "error", out_pattern, metavar="PATTERN",
        quick=True, group=IO, help="the same for their stderr"),
    Opt("-output-from --output-from", "output_from", output_from, metavar="RANKS", quick=True,
        group=IO, help="Hydra's: only these ranks' output (0, or 0,4-7) is shown or written, "
                       "the others' discarded"),
    Opt("--output-filename -output-filename", "output_filename", text, metavar="DIR",
        quick=True, group=IO,
        help="Open MPI's: each rank's stdout and stderr in DIR/1/rank.R/stdout and "
             ".../stderr (folders made as needed; ':nocopy' after DIR is taken: pmrun "
             "never copies them to its own output)"),
    Opt("--timestamp-output -timestamp-output", "timestamp_output", kind=FLAG, quick=True,
        group=IO,
        help="start every output line with the time pmrun writes it (Open MPI's)"),
    Opt("--stdin -stdin -i --input", "stdin", stdin_rank, metavar="RANK|all|none|FILE",
        group=IO, quick=True,
        help="the rank that reads pmrun's stdin (default 0), all: every rank reads it, or "
             "none: every rank reads /dev/null (Open MPI's --stdin, srun's -i); or FILE, "
             "which every rank reads, opening it on its node (srun's and Flux's -i FILE)"),
    Opt("--pty", "pty", kind=FLAG, group=IO,
        help="srun's: rank 0 runs on a pseudo-terminal (its stdin, stdout and stderr) that "
             "its node's agent makes (resized with pmrun's), pmrun's terminal raw meanwhile "
             "(Ctrl-C, Ctrl-Z and line editing are the program's, as over ssh -t), its "
             "output passed on as it comes; the other ranks' output is dropped (as srun "
             "does). pmrun --pty -n 1 bash"),
    Opt("--unbuffered", "unbuffered", kind=FLAG, quick=True, group=IO,
        help="srun's -u: each rank's output passed on as it comes, partial lines too (a "
             "prompt, a progress bar), and Python ranks unbuffered (PYTHONUNBUFFERED=1); "
             "by default a line is passed on whole. Not with -l, --timestamp-output"),
    Opt("--merge-stderr-to-stdout -merge-stderr-to-stdout", "merge_stderr", kind=FLAG,
        quick=True, group=IO, help="each rank's stderr goes where its stdout goes, in the "
                                   "order the rank wrote them (Open MPI's)"),
    Opt("--display-allocation -display-allocation", "display_allocation", kind=FLAG, group=IO,
        help="before the job starts, print each host and its slots (Open MPI's)"),
    Opt("--do-not-launch -do-not-launch", "do_not_launch", kind=FLAG, group=IO,
        help="check the command line and lay the ranks out (--display-map prints where), "
             "but start nothing (Open MPI's)"),
    Opt("--report-pid -report-pid", "report_pid", report_to, metavar="-|+|FILE", group=IO,
        help="write pmrun's process id: - on stdout, + on stderr, or into FILE (Open MPI's)"),
    Opt("-print-rank-map --print-rank-map --display-map", "print_rank_map", kind=FLAG,
        quick=True,
        group=IO, help="before the job starts, print each node's ranks (Hydra's "
                       "-print-rank-map, Open MPI's --display-map), one line per node"),
    Opt("--display", "display", display_items, metavar="map,bind", quick=True, group=IO,
        help="Open MPI 5's: map, as --display-map; bind, as --report-bindings"),
    Opt("-print-all-exitcodes --print-all-exitcodes", "print_all_exitcodes", kind=FLAG,
        group=IO, help="at the end, print every rank's exit status"),
    # Launch
    Opt("--launcher -launcher -bootstrap", "launcher", choice(*LAUNCHERS), metavar="NAME",
        group=LAUNCH, help="local, ssh (rsh), slurm, exec, or persistent (persist): the "
                           "pm-agent services of --agents"),
    Opt("--launcher-exec -launcher-exec -bootstrap-exec", "launcher_exec", text,
        metavar="CMD", group=LAUNCH,
        help="a template holding {host} or {command} (launcher exec, e.g. 'ip netns exec "
             "{host} {command}'), or, as in Hydra, the ssh/rsh program to use"),
    Opt("-bootstrap-exec-args -launcher-exec-args", "launcher_exec_args", text, metavar="ARGS",
        group=LAUNCH,
        help="Intel MPI's: more arguments for the program that starts the agents (after "
             "ssh's own options; srun's, for its step)"),
    Opt("--ssh", "ssh", text, metavar="CMD", group=LAUNCH, help="ssh command of the ssh launcher"),
    Opt("--user", "user", text, metavar="USER", group=LAUNCH, help="remote user for ssh"),
    Opt("-enable-x --enable-x", "enable_x", kind=FLAG, const="1", group=LAUNCH,
        help="Hydra's: X11 forwarding to the ranks started over ssh (ssh -X)"),
    Opt("-disable-x --disable-x", "enable_x", kind=FLAG, const="0", quick=True, group=LAUNCH,
        help="Hydra's: no X11 forwarding (the default)"),
    Opt("--agent-python", "agent_python", text, metavar="PATH", group=LAUNCH,
        help="the Python that runs pmrun's agent on other hosts (default: this one's path; "
             "a name is looked up in their PATH)"),
    Opt("-hybrid-hosts --hybrid-hosts", "agent_python", kind=FLAG, const="python3",
        group=LAUNCH, help="Hydra's: hosts do not share paths: --agent-python python3"),
    Opt("--propagate", "propagate", kind=FLAG, const=",".join(RLIMIT_NAMES), group=LAUNCH,
        metavar="[=STACK,CORE,...]",
        help="srun's: the ranks on every host get this shell's resource limits (ulimit): "
             "all of them, or --propagate=STACK,CORE (AS, CORE, CPU, DATA, FSIZE, MEMLOCK, "
             "NOFILE, NPROC, RSS, STACK; ALL, NONE)"),
    Opt("--ssh-limit", "ssh_limit", number(1), metavar="N", group=LAUNCH,
        help="at most N ssh connections starting at once (default 32)"),
    Opt("--agents", "agents", readable_file, metavar="FILE", group=LAUNCH,
        help="use running pm-agent services listed in FILE (host:port per line)"),
    Opt("-localhost", "iface", local_address, metavar="HOST", group=LAUNCH,
        help="Hydra's: the address (or a name for it) the agents reach pmrun at; as "
             "--iface ADDR"),
    Opt("-rmk --rmk", "rmk", choice("slurm", "pbs", "lsf"), metavar="slurm|pbs|lsf",
        group=LAUNCH,
        help="Hydra's: the hosts are this resource manager's allocation (pmrun finds a "
             "Slurm, PBS/Torque or LSF job by itself)"),
    Opt("--iface -iface", "iface", iface, metavar="NAME|ADDR", group=LAUNCH,
        help="network interface the agents listen on for their children, on every node "
             "(an address: the head's only)"),
    Opt("--join-timeout --spawn-timeout", "join_timeout", number(0.001), metavar="S",
        group=LAUNCH,
        help="give up when a node has not joined after S seconds (default 60; Open MPI 5's "
             "--spawn-timeout)"),
    Opt("--heartbeat", "heartbeat", number(0), metavar="S", group=LAUNCH,
        help="a node silent for S seconds is lost (default 5)"),
    # The tree
    Opt("--local-nodes", "local_nodes", whole(1, MOST_LOCAL_NODES), metavar="N", group=TREE,
        help="run N node agents on this machine, each acting as a node with its own KVS"),
    Opt("--fanout -branch-count", "fanout", whole(1, MOST_RANKS), metavar="K", quick=True,
        group=TREE,
        help="width of the agent tree (default 32; 16 over ssh)"),
    Opt("--kvs", "kvs", choice("shm", "socket"), metavar="shm|socket", quick=True, group=TREE,
        help="how ranks using pm.client read the node's KVS (default shm)"),
    Opt("--profile", "profile", writable_file, metavar="FILE", group=TREE,
        help="write a Chrome trace of the start-up timeline to FILE; srun's all, none, "
             "energy, task, lustre, network (or some of them, with commas): what Slurm "
             "profiles of pmrun's step, inside an allocation"),
    Opt("--sim-ranks-per-node", "sim_ranks", text, metavar="R", group=TREE,
        help="emulate R ranks per agent in-process (scale tests; no program)"),
    Opt("--sim-value-size", "sim_value_size", text, metavar="B", group=TREE,
        help="bytes of each simulated address (default 64)"),
    Opt("--sim-exchange", "sim_exchange", text, metavar="KIND", group=TREE,
        help="allgather (default) or fence"),
    Opt("--sim-gets", "sim_gets", text, metavar="LIST", group=TREE,
        help="peers each simulated rank gets from: left,right,leader (default), far"),
)


#: The other options (and a few of placement and launch, which --help lists after the
#: others of their groups).
OTHER_OPTIONS = (
    # Other
    Opt("--oversubscribe -oversubscribe --allow-run-as-root -allow-run-as-root -O "
        "--overcommit", "",
        kind=FLAG, quick=True, group=MISC,
        help="taken for Open MPI's mpirun (and srun's -O), and meaning nothing here: pmrun "
             "runs as any user, and never refuses more ranks than cores"),
    Opt("--rank-by -rank-by", "rank_by", rank_by, metavar="slot|node", group=PLACE,
        help="Open MPI's: how the ranks a node got are numbered: slot (core, package, "
             "numa...: a node's ranks consecutive) or node (one a node in turn)"),
    Opt("--nooversubscribe -nooversubscribe", "no_oversubscribe", kind=FLAG, group=MISC,
        help="refuse more ranks than the hosts' slots (Open MPI's; pmrun's default is to "
             "run them)"),
    Opt("--cpu-list -cpu-list --cpu-set -cpu-set", "cpu_list", cpu_list, metavar="0,2-3",
        quick=True, group=PLACE,
        help="Open MPI's: the ranks of a node bound to these CPUs (OS numbers), a CPU each "
             "in turn (--bind-to user:LIST)"),
    Opt("--overlap", "", kind=FLAG, quick=True, group=MISC,
        help="taken for srun, and meaning nothing here: inside an allocation pmrun's ranks "
             "share its nodes' CPUs with the other steps (its agents' step is srun's "
             "--overlap --whole) unless --exact"),
    Opt("--exact", "exact", kind=FLAG, group=MISC,
        help="srun's: inside an allocation, the job's CPUs on each node are its own, as "
             "Slurm grants a step (its agents' step asks for as many as its busiest node's "
             "ranks take, -c each), not shared with other steps: pmrun jobs started side "
             "by side in one allocation each get CPUs of their own"),
    Opt("--mpi -mpi", "mpi", mpi_kind, metavar="pmix|pmi|auto",
        quick=True, group=MISC,
        help="pmix: serve PMIx besides PMI-1/PMI-2 (Open MPI); pmi (none): not; "
             "auto (default): PMIx when a program is linked with Open MPI or "
             "libpmix, or is a Python whose environment holds Open MPI; srun's "
             "pmi2, pmix_v4... are pmi, pmix; list: what this machine can serve"),
    Opt("-t --time --time-limit", "timeout", slurm_time, metavar="TIME", quick=True, group=MISC,
        help="srun's time limit: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]; Flux's: 30s, 10m, "
             "1.5h, 1d (as --timeout)"),
    Opt("--quit-on-interrupt", "quit_on_interrupt", kind=FLAG, group=MISC,
        help="srun's: the first Ctrl-C kills the job at once (without it the ranks get "
             "SIGINT, and a second Ctrl-C kills)"),
    Opt("--disable-status", "", kind=FLAG, quick=True, group=MISC,
        help="srun's, taken: pmrun's first Ctrl-C forwards SIGINT to the ranks, without a "
             "status report"),
    Opt("--noprefix -noprefix --leave-session-attached -leave-session-attached", "",
        kind=FLAG, quick=True, group=MISC,
        help="Open MPI's, taken: pmrun never adds an install's prefix to the ranks' paths by "
             "itself (--prefix does), and its agents' messages always reach pmrun"),
    Opt("--keep-fqdn-hostnames --show-progress --fwd-environment", "", kind=FLAG, quick=True,
        group=MISC,
        help="Open MPI's, taken: pmrun names hosts as they were given, says every 5 s which "
             "nodes have not joined, and passes its environment to the ranks anyway"),
    Opt("-silent-abort", "", kind=FLAG, quick=True, group=MISC,
        help="Intel MPI's, taken: pmrun prints no backtrace at an abort, only the one line "
             "naming the rank and its code"),
    Opt("-W --wait", "wait_after_first", wait_seconds, metavar="SECONDS", group=MISC,
        help="once a rank ended, end the others after SECONDS (srun's; 0: no limit)"),
    Opt("-K --kill-on-bad-exit", "kill_on_bad_exit", kind=FLAG, const="1", quick=True,
        group=MISC,
        help="srun's: a rank that fails ends the job (the default); =0 (-K0): the others "
             "run on, as -disable-auto-cleanup"),
    Opt("--bcast --preload-binary", "bcast", kind=FLAG, const="", group=LAUNCH,
        help="srun's (Open MPI's --preload-binary): copy the program to every node of the "
             "job and run the copy there (in the node's TMPDIR or /tmp; --bcast=DIR/ in DIR, "
             "--bcast=PATH at PATH), removed when the job ends: for nodes that do not share "
             "the program's file system"),
    Opt("--send-libs", "send_libs", kind=FLAG, group=LAUNCH,
        help="srun's, with --bcast: the shared libraries the program loads from outside "
             "/lib, /usr/lib, /lib64 and /usr/lib64 go along, into a folder beside each "
             "copy that the ranks' LD_LIBRARY_PATH starts with (=no: not)"),
    Opt("--no-kill", "no_kill", kind=FLAG, group=MISC,
        help="srun's: a node lost (its agent gone) is named and the ranks of the other nodes "
             "run on to their end (the exit status is the first failure's); =off: the "
             "default, a lost node ends the job"),
    Opt("-disable-auto-cleanup --disable-auto-cleanup --enable-recovery", "kill_on_bad_exit",
        kind=FLAG, const="0", quick=True, group=MISC,
        help="Hydra's (Open MPI 5's --enable-recovery): a rank that fails is named and the "
             "others run on to their end (the exit status is the first failure's); an "
             "abort, a lost node or the time limit still ends the job"),
    Opt("-auto-cleanup --auto-cleanup", "kill_on_bad_exit", kind=FLAG, const="1", quick=True,
        group=MISC, help="Hydra's: a rank that fails ends the job (the default)"),
    Opt("--timeout -timeout", "timeout", run_timeout, metavar="SECONDS", quick=True,
        group=MISC,
        help="kill the job after SECONDS (or 2m, 1h30m; exit status 124); also "
             "MPIEXEC_TIMEOUT; of tasks, each task's run (as GNU parallel), or a percentage "
             "of the median successful run (200%)"),
    Opt("--forward-signals", "forward_signals", signal_list, metavar="LIST", group=MISC,
        help="Open MPI's: forward these signals to every rank too (SIGWINCH,SIGXCPU; names "
             "or numbers); INT, TERM, HUP, QUIT, USR1, USR2, ALRM, TSTP and CONT always are"),
    Opt("--signal", "signal_before_end", signal_before_end, metavar="[R:]SIG[@TIME]",
        group=MISC,
        help="srun's and Flux's: every rank gets SIG TIME seconds (default 60; Flux's 30s, "
             "2m) before the time limit (--timeout, -t; in a Slurm job without them, the "
             "job's own)"),
    Opt("--cpu-freq", "cpu_freq", cpu_freq, metavar="FREQ", group=PLACE,
        help="srun's, inside an allocation: the frequency (low, medium, high, highm1, kHz, "
             "MIN-MAX, :GOVERNOR) that Slurm sets for the CPUs of pmrun's step"),
    Opt("--acctg-freq", "acctg_freq", acctg_freq, metavar="S|TYPE=S,...", group=MISC,
        help="srun's, inside an allocation: how often Slurm samples the accounting of "
             "pmrun's step (and so its ranks)"),
    Opt("--slurmd-debug", "slurmd_debug", slurmd_debug, metavar="LEVEL", group=MISC,
        help="srun's, inside an allocation: the log level of slurmstepd for pmrun's step"),
    Opt("--relative", "relative", whole(0, MOST_RANKS), metavar="N", group=PLACE,
        help="srun's: the job's nodes from the N-th (from 0) of the allocation's, or of "
             "-hosts, -f, on"),
    Opt("-J --job-name", "job_name", job_name, metavar="NAME", group=MISC, quick=True,
        help="srun's and Flux's: the job's name, %x in --output/--error patterns (default: "
             "the allocation's, SLURM_JOB_NAME, else the program's) and the name of the "
             "Slurm step that starts pmrun's agents"),
    Opt("--open-mode", "open_mode", open_mode, metavar="append|truncate", group=MISC,
        help="srun's: the files of --output/--error (-o/-e) are appended to, or truncated "
             "(the default)"),
    Opt("--prolog", "srun_prolog", text, metavar="PROG", group=MISC,
        help="srun's: run PROG here, with the job's command as its arguments, before the "
             "job starts; a PROG that fails keeps the job from starting (its status is "
             "pmrun's)"),
    Opt("--epilog", "srun_epilog", text, metavar="PROG", group=MISC,
        help="srun's: run PROG here, with the job's command as its arguments, once the job "
             "has ended"),
    Opt("--task-prolog", "task_prolog", text, metavar="PROG", group=MISC,
        help="srun's: each rank runs PROG first, in its own process and environment; PROG's "
             "output lines 'export NAME=VALUE' and 'unset NAME' change the environment the "
             "program gets, 'print TEXT' prints TEXT; a PROG that fails ends the rank"),
    Opt("--task-epilog", "task_epilog", text, metavar="PROG", group=MISC,
        help="srun's: once a rank ended, its agent runs PROG with the rank's environment "
             "(at most 10 s) before it reports the end"),
    Opt("--report-state-on-timeout", "report_state", kind=FLAG, group=MISC,
        help="Open MPI's: at the timeout, before the kill, name each rank still running, "
             "what its process does and how far it got with PMI (the collective it waits in)"),
    Opt("--get-stack-traces", "stack_traces", kind=FLAG, group=MISC,
        help="Open MPI's: and each one's stack (gdb on its node)"),
    Opt("-configfile --configfile --app -app", "configfile", kind=FILE, metavar="FILE", group=MISC,
        help="the programs and their options, one MPMD section a line ('#' comments)"),
    Opt("--multi-prog", "multi_prog", kind=FLAG, group=MISC,
        help="srun's: the program is a file of lines RANKS PROGRAM ARGS (RANKS 0-3,5 or *; "
             "%t the rank, %o its place among the line's)"),
    Opt("--will-cite --no-notice", "", kind=FLAG, quick=True, group=MISC,
        help="GNU parallel's, taken and meaning nothing here: pmrun prints no notice"),
    Opt("-disable-hostname-propagation -enable-hostname-propagation", "", kind=FLAG,
        quick=True, group=MISC,
        help="Hydra's, taken and meaning nothing here: ranks find their host names "
             "themselves"),
    Opt("-demux", "", choice("poll", "select"), metavar="poll|select", quick=True,
        group=MISC, help="Hydra's I/O engine, taken and meaning nothing here"),
    Opt("-topolib", "", choice("hwloc"), metavar="hwloc", quick=True, group=MISC,
        help="Hydra's topology library: pmrun's is hwloc (see -info)"),
    Opt("-info --info", "info", kind=ACTION, group=MISC,
        help="print pmrun's version, what it serves and what it found here, and exit"),
    Opt("-v --verbose -verbose -debug --debug-daemons", "verbose", kind=COUNT, group=MISC,
        help="say what pmrun does (twice: debug)"),
    Opt("-Q --quiet -quiet", "quiet", kind=COUNT, quick=True, group=MISC,
        help="say only what went wrong: no warnings (srun's -Q, Open MPI's --quiet and, on "
             "an MPI job, -q)"),
    Opt("--version -version", "version", kind=ACTION, group=MISC,
        help="print the version and exit"),
    Opt("-h --help -help", "help", kind=ACTION, group=MISC, help="show this help and exit"),
)


#: Every option, in ``pmrun --help``'s order within each group.
OPTIONS = (*JOB_OPTIONS, *ENSEMBLE_OPTIONS, *OTHER_OPTIONS)

BY_NAME = {name: opt for opt in OPTIONS for name in opt.names}
