"""The job's nodes as ``pmrun``'s command line gives them (:class:`pm.cli.CliOptions`).

Its hosts and their slots, and the launcher that reaches them: the hosts given (``-hosts``,
``-f``), the allocation's (Slurm, PBS, LSF), a program's own, or this machine; narrowed by
``-N``, ``--relative``, ``-skip-launch-node`` and ordered by ``-order-nodes``; each rank's
node where a file or a list places them (a rankfile, ``-rankmap``, ``-m arbitrary``), or
Hydra's dealing of the ranks to a host list's entries.  :func:`hosts_of` is light (no
asyncio, no agent code): it also runs before the full path's heavy imports, to start the
first agents early (:func:`pm.bootstrap.early.prestart`).
"""

from __future__ import annotations

import functools
import os
import socket
from typing import TYPE_CHECKING

from pm.options import slurm_distribution
from pm.proto.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pm.cli import CliOptions
    from pm.common.nodes import Nodes
    from pm.common.rankfile import RankLine


def nodes_of(opts: CliOptions) -> object:
    from pm.common.nodes import Nodes

    where = hosts_of(opts)
    if where is None:
        boot = bootstrap_options_of(opts)
        nodes = Nodes.local(opts.local_nodes or 1, opts.fanout)
        nodes.bootstrap.update(boot)
        return nodes
    hosts, slots, boot = where
    return Nodes(hosts, slots, opts.fanout, boot, app_nodes=opts.app_nodes, deal=opts.deal)


def bootstrap_options_of(opts: CliOptions) -> dict[str, object]:
    from pm.bootstrap import bootstrap_options

    try:
        return bootstrap_options(opts.extra)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def hosts_of(opts: CliOptions) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """The job's hosts, their slots and the bootstrap options; None for this machine alone.
    Light (no asyncio, no agent code): it also runs before the heavy imports, to start the
    first agents early (:func:`pm.bootstrap.early.prestart`)."""
    # (The job's hosts from the file, given none: not the allocation's own -m arbitrary.)
    given = None if opts.extra.get("arbitrary") == "SLURM_DISTRIBUTION" else \
        _given_placement(opts)
    if given is not None and not (opts.hosts or opts.hostfile or opts.local_nodes):
        opts.hosts = _rankfile_hosts(given[1])
    where = _first_nodes(opts, _order_nodes(opts, _skip_launch_node(opts, _where(opts))))
    if any(app.hosts for app in opts.spec.apps):
        where = _program_hosts(opts, where)
    if where is not None and not opts.fanout_given and where[2].get("name") == "ssh":
        from pm.bootstrap.ssh import DEFAULT_FANOUT

        opts.fanout = DEFAULT_FANOUT
    if where is not None and not opts.bind_given and where[2].get("name") == "slurm":
        opts.spec.bind_to = slurm_binding(os.environ) or opts.spec.bind_to
    if where is not None and not opts.distribution_given and where[2].get("name") == "slurm":
        opts.spec.distribution = slurm_distribution(os.environ)
        if opts.spec.distribution == "arbitrary":
            opts.extra["arbitrary"] = "SLURM_DISTRIBUTION"
            opts.spec.distribution = "block"
    given = _given_placement(opts)
    if given is not None:
        where = _rankfile(opts, where, *given)
    where = _dealt(opts, where)
    if not opts.n_given and opts.spec.ppn and len(opts.spec.apps) == 1:
        # -ppn P without -n: P ranks on each node, whatever its slots (Hydra's -ppn, Open
        # MPI's --npernode, srun's --ntasks-per-node, Flux's --tasks-per-node).
        nodes = len(where[0]) if where is not None else opts.local_nodes or 1
        opts.spec.apps[0].n = nodes * opts.spec.ppn
        opts.n_given = True
    if where is not None and not opts.n_given and opts.spec.apps and (
            opts.host_entries is not None or all(s is not None for s in where[1])):
        # No -n: one rank per slot the allocation or host list gives, a host of -hosts'
        # or -f's without a count one (Hydra, srun).
        opts.spec.apps[0].n = sum(1 if s is None else s for s in where[1])
    if where is None or where[2].get("name") != "slurm":  # srun's step options
        for key, what in (("exact", "--exact gives a job CPUs of its own within a Slurm "
                                    "allocation"),
                          ("cpu_freq", "--cpu-freq is set by Slurm for the CPUs of a job "
                                       "step"),
                          ("slurm_profile", f"--profile={opts.extra.get('slurm_profile')} is "
                                            "what Slurm's profiling samples of a job step "
                                            "(pmrun's own: --profile FILE, a path such as "
                                            f"./{opts.extra.get('slurm_profile')})"),
                          ("acctg_freq", "--acctg-freq is how often Slurm's accounting "
                                         "samples a job step"),
                          ("slurmd_debug", "--slurmd-debug is the log level of a Slurm "
                                           "job step's slurmstepd")):
            if key in opts.extra and opts.extra[key].lower() != "none":
                raise UsageError(f"{what}: this job's ranks are not started through Slurm")
    if where is not None and where[2].get("name") == "persistent":
        services = where[2].get("services")
        assert isinstance(services, dict)
        unknown = [h for h in dict.fromkeys(where[0]) if h not in services]
        if unknown:
            raise UsageError(f"{', '.join(unknown)}: not in the agents file "
                             f"{opts.extra.get('agents')} (a job runs on its services' hosts: "
                             f"{', '.join(services)})")
        from pm.agent.service import KeyFileError, read_keypair

        try:  # (our key pair is the user's file: named now, before any service is asked)
            read_keypair(str(where[2].get("client_key")))
        except KeyFileError as exc:
            raise UsageError(f"--agents {opts.extra.get('agents')}: client-key: {exc}"
                             ) from None
    return where


@functools.cache
def _rankfile_lines(path: str) -> list[RankLine]:
    """The rankfile's ranks, read once (the job's hosts are found twice: before the heavy
    imports, to start the first agents early, and for the plan)."""
    from pm.common.rankfile import RankfileError, parse
    from pm.options import file_text

    try:
        return parse(file_text(path), f"rankfile {path}")
    except RankfileError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"rankfile {path} cannot be read ({exc})") from None


@functools.cache
def _hostfile_lines(path: str) -> list[RankLine]:
    """srun's ``-m arbitrary``: ``SLURM_HOSTFILE``'s hosts, a rank each, rank 0 first (a
    line a host, or a host list such as ``node[1-2]``; ``#`` comments), read once."""
    from pm.common.hostlist import HostlistError, expand
    from pm.common.rankfile import RankLine
    from pm.options import file_text

    lines: list[RankLine] = []
    try:
        for number, raw in enumerate(file_text(path).splitlines(), 1):
            try:
                hosts = expand(raw.split("#", 1)[0])
            except HostlistError as exc:
                raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} line {number}: "
                                 f"{exc}") from None
            lines += [RankLine(h, None, "") for h in hosts]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} cannot be read ({exc})"
                         ) from None
    if not lines:
        raise UsageError(f"-m arbitrary: SLURM_HOSTFILE {path} names no host")
    return lines


def _rankmap_lines(opts: CliOptions) -> list[RankLine]:
    """Hydra's ``-rankmap``: each rank's node by its place in the job's nodes; with -n past
    the list's end, the list again from its first node 0 (Hydra's)."""
    from pm.common.rankfile import RankLine, parse_rankmap

    ids, again = parse_rankmap(opts.extra["rankmap"])
    if opts.n_given and again is not None:
        while len(ids) < opts.spec.size:
            ids += ids[again:]
    return [RankLine("", node, "") for node in ids]


def _given_placement(opts: CliOptions) -> tuple[str, list[RankLine]] | None:
    """Each rank's host as a file gives it: Open MPI's rankfile, or srun's ``-m arbitrary``
    and its ``SLURM_HOSTFILE`` (a host a rank); what names it in a refusal, and its ranks."""
    given = [n for n, on in (("--rankfile", "rankfile" in opts.extra),
                             ("-rankmap", "rankmap" in opts.extra),
                             ("-m arbitrary", "arbitrary" in opts.extra)) if on]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} both place every rank: give one")
    if "rankfile" in opts.extra:
        path = opts.extra["rankfile"]
        return f"--rankfile {path}", _rankfile_lines(path)
    if "rankmap" in opts.extra:
        return f"-rankmap {opts.extra['rankmap']}", _rankmap_lines(opts)
    if not given:
        return None
    path = os.environ.get("SLURM_HOSTFILE", "")
    if not path:
        raise UsageError("-m arbitrary places the ranks on SLURM_HOSTFILE's hosts, a rank a "
                         "line: SLURM_HOSTFILE is not set")
    return f"-m arbitrary (SLURM_HOSTFILE {path})", _hostfile_lines(path)


def _rankfile_hosts(lines: list[RankLine]) -> str | None:
    """The hosts of a rankfile that names them all (no ``+nK``), as a -hosts list, when one
    is another machine: the job's hosts, given none (else this machine, or the
    allocation's)."""
    from pm.common.hostlist import is_this_machine

    named = list(dict.fromkeys(ln.host for ln in lines))
    if any(ln.relative is not None for ln in lines) or all(map(is_this_machine, named)):
        return None
    return ",".join(named)


def _rankfile(opts: CliOptions,
              where: tuple[list[str], list[int | None], dict[str, object]] | None,
              source: str, lines: list[RankLine]
              ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Each rank's node as a file or a list gives it (:func:`_given_placement`: Open MPI's
    rankfile, Hydra's -rankmap, srun's -m arbitrary; ``source`` names it in a refusal):
    ``spec.placement``, indices into the job's hosts, and the cores of a rankfile's
    ``slot=`` (``spec.rank_slots``).  A host named ``+nK`` is the K-th host given (or local node);
    other names are hosts given, or, given none, the job's hosts in the order the file
    first names them.  Without -n the job has as many ranks as the file."""
    from pm.common.hostlist import is_this_machine

    spec = opts.spec
    for given, what in ((spec.ppn is not None, "-ppn"), (spec.rank_by, "--rank-by"),
                        (any(a.hosts for a in spec.apps), "a program's own -host"),
                        (opts.bind_given and any(ln.slot for ln in lines), "--bind-to")):
        if given:
            raise UsageError(f"{source} places every rank: {what} disagrees")
    if not opts.n_given and len(spec.apps) == 1:
        spec.apps[0].n = len(lines)
        opts.n_given = True
    if spec.size > len(lines):
        raise UsageError(f"{source} places {len(lines)} ranks: the job has {spec.size}")
    lines = lines[:spec.size]
    # (This machine's nodes, given no hosts: named by their place alone.)
    hosts = where[0] if where is not None else [f"+n{k}" for k in range(opts.local_nodes or 1)]
    index: dict[str, int] = {}
    for i, host in enumerate(hosts):
        index.setdefault(host, i)
    # (This machine by another of its names: the host given that is it.)
    here = 0 if where is None and len(hosts) == 1 else next(
        (i for i, host in enumerate(hosts) if is_this_machine(host)), None)
    placement: list[int] = []
    for rank, line in enumerate(lines):
        if line.relative is not None:
            node = line.relative
            if node >= len(hosts):
                named = f"node {node}" if source.startswith("-rankmap") else f"+n{node}"
                raise UsageError(f"{source}: rank {rank} is on {named}, the job has "
                                 f"{len(hosts)} host{'s' * (len(hosts) > 1)}")
        elif line.host in index:
            node = index[line.host]
        elif here is not None and is_this_machine(line.host):
            node = here
        else:
            raise UsageError(f"{source}: rank {rank} is on {line.host}, not one of "
                             f"the job's hosts ({', '.join(hosts[:4])}"
                             f"{', ...' if len(hosts) > 4 else ''})")
        placement.append(node)
    spec.placement = placement
    spec.rank_slots = [ln.slot for ln in lines] if any(ln.slot for ln in lines) else []
    return where


def _program_hosts(opts: CliOptions,
                   where: tuple[list[str], list[int | None], dict[str, object]] | None
                   ) -> tuple[list[str], list[int | None], dict[str, object]]:
    """Programs with hosts of their own (``-host`` after the first program, Open MPI's
    ``--host`` of an app context): the job's nodes are every program's hosts, in the order
    they first come (a program without its own has the job's: -hosts before the first
    program, the allocation's, or this machine); each program's ranks go to its own
    (``opts.app_nodes``): in blocks by their slots, a host without a count an even share
    (Open MPI's); those of a program without its own dealt to the job's -hosts list as
    Hydra deals them (:func:`_dealt`).  A host's slots are what the programs give it,
    together."""
    from pm.bootstrap import bootstrap_options
    from pm.common.hostlist import HostlistError, parse_hosts_option

    if "nodes" in opts.extra or opts.local_nodes:
        raise UsageError("a program's own -host and -N or --local-nodes do not go together")
    default: list[tuple[str, int | None]] = (
        list(zip(where[0], where[1], strict=True)) if where is not None
        else [(socket.gethostname(), None)])
    # (A program without hosts of its own: the job's -hosts list, dealt as the job's.)
    default_dealt: list[tuple[str, int | None]] = (
        [*_hydra_entries(opts, where[0])] if where is not None and _deals(opts)
        else default)
    hosts: list[str] = []
    slots: list[int | None] = []
    opts.app_nodes = []
    for app in opts.spec.apps:
        try:
            entries = ([(e.host, e.slots) for e in parse_hosts_option(app.hosts)]
                       if app.hosts else default)
        except HostlistError as exc:
            raise UsageError(f"-host {app.hosts}: {exc}") from None
        for host, count in entries:
            if host in hosts:
                i = hosts.index(host)
                have = slots[i]
                slots[i] = None if have is None or count is None else have + count
            else:
                hosts.append(host)
                slots.append(count)
        dealt = entries if app.hosts else default_dealt
        mine: tuple[list[int], list[int | None]] = (
            [hosts.index(host) for host, _ in dealt], [count for _, count in dealt])
        opts.app_nodes.append(mine)
    if where is not None and set(hosts) <= set(where[0]):
        return hosts, slots, where[2]  # (the allocation's, or -hosts' own launcher)
    try:
        return hosts, slots, bootstrap_options(opts.extra, hosts)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _first_nodes(opts: CliOptions,
                 where: tuple[list[str], list[int | None], dict[str, object]] | None
                 ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """``--relative R``: the hosts from the R-th on (srun's); ``-N K`` (``--nodes``): the
    first K of the hosts (srun's and Flux's meaning), ``-n``
    ranks spread over them in blocks as srun lays out a step (:func:`step_counts`: 7 ranks
    on 3 equal nodes are 3, 2 and 2; 4 on nodes of 4 and 1 slots are 3 and 1); with
    ``-ppn P`` and no ``-n``, P on each (:func:`hosts_of` counts them, as without -N).
    Fewer hosts, or fewer ranks than K, is refused: a node without ranks is not what -N
    asks for."""
    if "relative" in opts.extra:  # srun's --relative N: the nodes from the N-th on
        r = int(opts.extra["relative"])
        if where is None:
            raise UsageError(f"--relative {r}: this machine is the only host (give -hosts "
                             "or -f, or run inside an allocation)")
        if r >= len(where[0]):
            raise UsageError(f"--relative {r}: there are {len(where[0])} hosts, counted from "
                             "0")
        where = where[0][r:], where[1][r:], where[2]
    if "nodes" not in opts.extra:
        return where
    k = int(opts.extra["nodes"])
    if where is None:
        have = opts.local_nodes or 1
        if k > have:
            raise UsageError(f"-N {k}: {have} local nodes (--local-nodes)" if opts.local_nodes
                             else f"-N {k}: this machine is the only host (give -hosts or -f, "
                             "or run inside an allocation)")
        if opts.local_nodes:
            opts.local_nodes = k
    else:
        hosts, slots, boot = where
        if k > len(hosts):
            raise UsageError(f"-N {k}: there are {len(hosts)} hosts ({', '.join(hosts[:4])}"
                             f"{', ...' if len(hosts) > 4 else ''})")
        where = hosts[:k], slots[:k], boot
    apps = opts.spec.apps
    if where is not None and not opts.n_given and not opts.spec.ppn:
        # A rank per slot (hosts_of), a host without a count one (srun -N K: K tasks).
        where = where[0], [1 if s is None else s for s in where[1]], where[2]
    per_node = bool(opts.spec.ppn) and not opts.n_given and len(apps) == 1
    if not per_node and (where is None or opts.n_given) and apps:  # (per_node: hosts_of)
        n = sum(a.n for a in apps)
        if n < k:
            raise UsageError(f"-N {k}: {n} ranks cannot fill {k} nodes")
        if where is not None and not opts.spec.ppn:
            from pm.common.mapping import step_counts

            counts: list[int | None] = [*step_counts(n, where[1])]
            where = where[0], counts, where[2]
    return where


def slurm_binding(env: Mapping[str, str]) -> str | None:
    """The ``--bind-to`` that srun would apply in this allocation, or None (pure).

    With ``-c N`` (``SLURM_CPUS_PER_TASK``) srun binds each task to N cpus of what the
    job has on the node; pmrun does the same unless told otherwise (``hwthread:N``: N
    neighbouring hardware threads, a Slurm cpu being one).  The agents only ever see
    the cpus the allocation grants on their node (the step's cgroup and affinity), so
    the ranks stay within them.
    """
    text = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if not text.isdecimal() or int(text) < 1:
        return None
    return "hwthread" if int(text) == 1 else f"hwthread:{int(text)}"


def _order_nodes(opts: CliOptions,
                 where: tuple[list[str], list[int | None], dict[str, object]] | None
                 ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's ``-order-nodes ASCENDING`` (``DESCENDING``): the hosts by their slots, fewest
    (most) first, hosts with as many in their order; a host without a count has one."""
    order = opts.extra.get("order_nodes")
    if order is None or where is None:
        return where
    hosts, slots, boot = where
    ranked = sorted(range(len(hosts)), key=lambda i: slots[i] or 1,
                    reverse=order == "descending")
    return [hosts[i] for i in ranked], [slots[i] for i in ranked], boot


def _skip_launch_node(opts: CliOptions,
                      where: tuple[list[str], list[int | None], dict[str, object]] | None
                      ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's ``-skip-launch-node`` (Open MPI's ``--nolocal``): the hosts but this machine
    (a batch job's first node, a login node in the host file)."""
    if "skip_launch" not in opts.extra:
        return where
    from pm.common.hostlist import is_this_machine

    what = "no ranks on this machine (-skip-launch-node, --nolocal)"
    if where is None:
        raise UsageError(f"{what}, but it is the only host (give -hosts or -f, or run inside "
                         "an allocation)")
    kept = [i for i, host in enumerate(where[0]) if not is_this_machine(host)]
    if not kept:
        raise UsageError(f"{what}, but every host given is this machine")
    return [where[0][i] for i in kept], [where[1][i] for i in kept], where[2]


def _where(opts: CliOptions) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    from pm.bootstrap import bootstrap_options, default_hosts
    from pm.bootstrap.base import LOCAL_NAMES

    entries = None
    try:
        if opts.hosts or opts.hostfile:
            from pm.common.hostlist import merged, parse_hostfile, parse_hosts_option
            from pm.options import file_text

            if opts.hostfile:
                listed = parse_hostfile(file_text(opts.hostfile), merge=False)
            else:
                listed = parse_hosts_option(opts.hosts or "", merge=False)
            entries = merged(listed)
        # Hosts that are other machines are reached over ssh unless told otherwise.
        boot = bootstrap_options(opts.extra, [e.host for e in entries] if entries else False)
        given = None if entries is not None else default_hosts(boot)
        if entries is not None and boot["name"] != "slurm":
            # (Nodes of the allocation we run in, as srun -w: placed as srun's.)
            opts.host_entries = [(e.host, e.slots) for e in listed]
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if given is not None:
        if opts.local_nodes:
            raise UsageError(f"--local-nodes and --launcher {boot['name']} do not go together")
        return [h for h, _ in given], [s for _, s in given], boot
    if entries is not None:
        if opts.local_nodes:
            raise UsageError("--local-nodes and -hosts/-f do not go together")
        return [e.host for e in entries], [e.slots for e in entries], boot
    if boot["name"] not in LOCAL_NAMES:
        raise UsageError(f"--launcher {boot['name']} needs hosts (-hosts or -f)")
    return None


def _placed_otherwise(opts: CliOptions) -> bool:
    """Whether an option places the ranks, not Hydra's dealing to a host list's entries:
    -ppn, -m (--distribution), --map-by, a rankfile (-rankmap, -m arbitrary), -N."""
    return bool(opts.spec.ppn or opts.distribution_given or opts.map_by_given
                or opts.spec.placement or "nodes" in opts.extra)


def _deals(opts: CliOptions) -> bool:
    """Whether the job's ranks are dealt to its -hosts' or -f's entries as Hydra deals
    them (:func:`_dealt`): nothing places them otherwise (an allocation's
    SLURM_DISTRIBUTION neither)."""
    return (opts.host_entries is not None and not _placed_otherwise(opts)
            and opts.spec.distribution == "block")


def _hydra_entries(opts: CliOptions, kept: list[str]) -> list[tuple[str, int]]:
    """The entries of -hosts' or -f's list as Hydra deals ranks to them: in order, a
    count not given 1, a host named again right after itself one entry (Hydra's), those
    of the ``kept`` hosts (-skip-launch-node, --relative), in -order-nodes' order."""
    assert opts.host_entries is not None
    out: list[tuple[str, int]] = []
    for host, count in opts.host_entries:
        if out and out[-1][0] == host:
            out[-1] = (host, out[-1][1] + (count or 1))
        else:
            out.append((host, count or 1))
    keep = set(kept)
    out = [e for e in out if e[0] in keep]
    order = opts.extra.get("order_nodes")
    if order is not None:
        out.sort(key=lambda e: e[1], reverse=order == "descending")
    return out


def _dealt(opts: CliOptions,
           where: tuple[list[str], list[int | None], dict[str, object]] | None
           ) -> tuple[list[str], list[int | None], dict[str, object]] | None:
    """Hydra's placement for hosts given with -hosts or -f (HYDRA_HOST_FILE): every
    entry of the list has its count (1 when none is given) and the ranks are dealt to the
    entries in order, each taking its count, round and round; a host named twice is one
    node (one agent) with two entries (``opts.deal``).  The hosts in the order the
    entries first name them (where the ranks go first)."""
    opts.deal = None
    if where is None or opts.app_nodes is not None or not _deals(opts):
        return where
    entries = _hydra_entries(opts, where[0])
    hosts = list(dict.fromkeys(host for host, _ in entries))
    if hosts != where[0]:  # (-order-nodes, a host named again: by its entries' order)
        given = dict(zip(where[0], where[1], strict=True))
        where = hosts, [given[h] for h in hosts], where[2]
    index = {host: i for i, host in enumerate(hosts)}
    opts.deal = [(index[host], count) for host, count in entries]
    return where


def system_size(slots: list[int | None], bootstrap: dict[str, object]) -> int:
    """-usize SYSTEM: the slots of the nodes (Hydra: their cores); a node given without
    slots counts this machine's cpus if it is this machine, else 1."""
    from pm.bootstrap.base import LOCAL_NAMES

    here = len(os.sched_getaffinity(0)) if bootstrap.get("name") in LOCAL_NAMES else 1
    return sum(s if s is not None else here for s in slots)


def oversubscribed(size: int, nodes: Nodes) -> str | None:
    """Why ``size`` ranks are more than the slots of ``nodes`` (None: they are not, or a
    host's slots are not known): Open MPI's --nooversubscribe."""
    from pm.bootstrap.base import LOCAL_NAMES

    local = nodes.bootstrap.get("name") in LOCAL_NAMES
    slots = [s if s is not None else len(os.sched_getaffinity(0)) if local else None
             for s in nodes.slots]
    if None in slots:
        return None
    total = sum(s for s in slots if s is not None)
    if size <= total:
        return None
    return (f"{size} ranks but {total} slot{'s' if total != 1 else ''} ("
            + ", ".join(f"{host}: {s}" for host, s in zip(nodes.hosts, slots, strict=True))
            + ")")
