"""Which cpus each local rank is bound to: pure computation over a :class:`Topology`.

Two decisions, as in Open MPI and Hydra:

* **map-by** orders the places ranks go to.  ``core`` (and ``slot``): local
  rank *i* goes to the *i*-th core.  ``numa`` / ``package`` / ``l3cache``:
  round robin across those objects (rank 0 to the first, rank 1 to the
  second, ...), each object handing out its cores in order, so ranks are
  spread.  ``hwthread``: hardware threads in order, filling a core's threads
  before the next core.  Within an object, every core gets a rank before any
  core gets a second one on another hardware thread.
* **bind-to** sizes the cpuset: the object of that type containing the
  mapped place (``hwthread`` -> one PU, ``core`` -> the core's PUs, ...).

A place is a core, or a hardware thread when either decision is
``hwthread``.  More local ranks than places is an *overload* (Open MPI's
word): the ranks are then left unbound with a one-line notice, unless the
policy says ``:overload-allowed``, in which case places are reused round
robin.  ``user:`` lists give cpus per rank explicitly (Hydra's syntax).

Nothing here touches the system; the agent applies the cpusets at spawn.
"""

from __future__ import annotations

from pm.agent.topology import MOST_CPUS, Topology, cpu_range, format_cpuset
from pm.common.values import Value
from pm.proto.errors import PMError

BIND_TARGETS = ("none", "hwthread", "core", "l3cache", "numa", "package")
MAP_TARGETS = ("slot", "core", "numa", "package")

# Every accepted spelling -> canonical name.  Hydra's "socket" and
# "numanode", and the extra map targets hwthread and l3cache, are accepted.
_BIND_SPELLINGS = {
    "none": "none",
    "hwthread": "hwthread",
    "core": "core",
    "l3cache": "l3cache",
    "numa": "numa",
    "numanode": "numa",
    "package": "package",
    "socket": "package",
}
MAP_SPELLINGS = {
    "slot": "slot",
    "hwthread": "hwthread",
    "core": "core",
    "l3cache": "l3cache",
    "numa": "numa",
    "numanode": "numa",
    "package": "package",
    "socket": "package",
}
OVERLOAD_ALLOWED = "overload-allowed"


def as_spelled(message: str, bind_to: str, spelled: str) -> str:
    """A binding error's ``message`` naming the option the user gave (``spelled``: srun's
    ``--cpu-bind=map_cpu:7``, Open MPI's ``--cpu-list 7``) where it says ``--bind-to
    BIND_TO``, which that option became (pure)."""
    return message.replace(f"--bind-to {bind_to}", spelled, 1) if spelled else message


class BindingError(PMError, ValueError):
    """A --bind-to / --map-by spec that cannot be parsed, or user cpus this node lacks."""


class BindPolicy(Value):
    """A parsed ``--bind-to``.

    ``target`` is one of :data:`BIND_TARGETS` or ``"user"``; for ``"user"``,
    ``user_sets[i]`` is the cpuset of local rank *i* (reused round robin).
    ``overload_allowed`` binds even when ranks outnumber places; ``count`` is the
    objects of ``target`` per rank (Hydra's ``core:2``: each rank on two cores).
    """

    __slots__ = ("count", "overload_allowed", "target", "user_sets")

    def __init__(self, target: str, user_sets: tuple[frozenset[int], ...] = (),
                 overload_allowed: bool = False, count: int = 1) -> None:
        self.target = target
        self.user_sets = user_sets
        self.overload_allowed = overload_allowed
        self.count = count

    def __str__(self) -> str:
        if self.target == "user":
            return "user:" + ",".join("+".join(_ranges(s)) for s in self.user_sets)
        return (self.target + (f":{self.count}" if self.count > 1 else "")
                + (f":{OVERLOAD_ALLOWED}" if self.overload_allowed else ""))


class Bindings(Value):
    """The result for one node: one cpuset per local rank, or None for "do not bind";
    ``notice``: one line for the user, e.g. why nothing is bound."""

    __slots__ = ("cpusets", "notice")

    def __init__(self, cpusets: tuple[frozenset[int], ...] | None,
                 notice: str | None = None) -> None:
        self.cpusets = cpusets
        self.notice = notice


def _ranges(cpus: frozenset[int]) -> list[str]:
    return format_cpuset(cpus).split(",")


_BIND_HELP = "one of none, hwthread, core, l3cache, numa, package (socket), or user:<cpus>,..."


def parse_bind(spec: str) -> BindPolicy:
    """Parse a ``--bind-to`` value.

    Accepted: a target from :data:`BIND_TARGETS` (or ``socket``/``numanode``),
    optionally with ``:overload-allowed``; or ``user:<list>`` where ``,``
    separates ranks, ``+`` joins cpus of one rank, ``a-b`` is a range and a
    trailing ``xN`` repeats an entry N times (``user:0+1,2-3x2`` -> rank 0 on
    {0,1}, ranks 1 and 2 on {2,3}).  Raises :class:`BindingError`.
    """
    text = spec.strip().lower()
    if text.startswith("user:"):
        return BindPolicy("user", user_sets=_parse_user(text[len("user:") :], spec))
    name, colon, qualifiers = text.partition(":")
    target = _BIND_SPELLINGS.get(name)
    if target is None:
        raise BindingError(f"unknown --bind-to {spec!r}: expected {_BIND_HELP}")
    if colon and not qualifiers:
        raise BindingError(f"--bind-to {spec!r}: nothing after ':' (a count of {name}s per "
                           f"rank, e.g. {name}:2, or {OVERLOAD_ALLOWED!r})")
    count, overload = 1, False
    for qualifier in qualifiers.split(":") if qualifiers else ():
        if qualifier == OVERLOAD_ALLOWED:
            overload = True
        elif qualifier.isdecimal() and int(qualifier) >= 1:
            count = int(qualifier)  # Hydra's core:N: N cores per rank
        else:
            raise BindingError(
                f"unknown qualifier {qualifier!r} in --bind-to {spec!r}: a count of "
                f"{name}s per rank (e.g. {name}:2) or {OVERLOAD_ALLOWED!r}"
            )
    if qualifiers and target == "none":
        raise BindingError(f"--bind-to {spec!r}: 'none' takes no qualifier")
    return BindPolicy(target, overload_allowed=overload, count=count)


#: The most ranks a ``user:`` entry's ``xN`` repeats (a job's most ranks).
_MOST_REPEATS = 1 << 24


def _parse_user(body: str, spec: str) -> tuple[frozenset[int], ...]:
    if not body:
        raise BindingError(f"--bind-to {spec!r}: user: needs at least one cpu")
    sets: list[frozenset[int]] = []
    for entry in body.split(","):
        cpus_text, times_sep, times_text = entry.partition("x")
        times = 1
        if times_sep:
            if not times_text.isdecimal() or not 1 <= int(times_text) <= _MOST_REPEATS:
                raise BindingError(f"--bind-to {spec!r}: bad repeat count in {entry!r} "
                                   f"(1 to {_MOST_REPEATS})")
            times = int(times_text)
        cpus: set[int] = set()
        for item in cpus_text.split("+"):
            bounds = cpu_range(item.strip())
            if bounds is None:
                raise BindingError(
                    f"--bind-to {spec!r}: {item!r} is not a cpu number or range "
                    "(',' separates ranks, '+' joins cpus, 'a-b' is a range)"
                )
            lo, hi = bounds
            if hi < lo:
                raise BindingError(f"--bind-to {spec!r}: empty range {item!r}")
            if hi >= MOST_CPUS:
                raise BindingError(f"--bind-to {spec!r}: no machine has a cpu {hi} (they "
                                   f"go up to {MOST_CPUS - 1} at most)")
            cpus.update(range(lo, hi + 1))
        sets.extend([frozenset(cpus)] * times)
    return tuple(sets)


def parse_map(spec: str) -> str:
    """Parse a ``--map-by`` value to its canonical name; raises :class:`BindingError`.

    Canonical names: :data:`MAP_TARGETS` plus ``hwthread`` and ``l3cache``;
    ``socket`` means ``package`` and ``numanode`` means ``numa``.  Open MPI's
    ``ppr:N:OBJECT`` (package, numa, l3cache, core, hwthread): N ranks to each such
    object, object after object.
    """
    text = spec.strip().lower()
    if text.startswith("ppr:"):
        count, _, obj = text[4:].partition(":")
        name = MAP_SPELLINGS.get(obj)
        if not count.isdecimal() or int(count) < 1 or name in (None, "slot"):
            raise BindingError(f"unknown --map-by {spec!r}: ppr:N:OBJECT takes a count and "
                               "one of package, numa, l3cache, core, hwthread")
        return f"ppr:{int(count)}:{name}"
    canonical = MAP_SPELLINGS.get(text)
    if canonical is None:
        accepted = ", ".join(sorted(MAP_SPELLINGS))
        raise BindingError(f"unknown --map-by {spec!r}: expected one of {accepted}")
    return canonical


def compute_bindings(
    topo: Topology, nlocal: int, bind_to: str | BindPolicy, map_by: str = "core"
) -> Bindings:
    """The cpuset of each of ``nlocal`` ranks on the node described by ``topo``.

    Returns ``Bindings(None, ...)`` for ``none``, on overload without
    ``:overload-allowed`` (with a notice saying how to force it), and when the
    topology lacks the requested object type (no L3 information).  Raises
    :class:`BindingError` for bad specs, a negative count, or ``user:`` cpus
    that are not usable on this node.
    """
    policy = parse_bind(bind_to) if isinstance(bind_to, str) else bind_to
    mapping = parse_map(map_by)
    if nlocal < 0:
        raise BindingError(f"negative number of local ranks: {nlocal}")
    if policy.target == "none":
        return Bindings(None)
    if nlocal == 0:
        return Bindings(())
    if policy.target == "user":
        return _user_bindings(topo, nlocal, policy)
    if not topo.l3caches and "l3cache" in (policy.target, mapping.rpartition(":")[2]):
        return Bindings(None, "no L3 cache information on this node: not binding")

    by_thread = "hwthread" in (policy.target, mapping.rpartition(":")[2])
    if policy.count > 1:
        return _counted_bindings(topo, nlocal, policy, mapping)
    places = _places(topo, mapping, by_thread=by_thread, compact=policy.target == "hwthread")
    if not places:
        return Bindings(None, "no usable cpus in the topology: not binding")
    if nlocal > len(places) and not policy.overload_allowed:
        return Bindings(None, _overload_notice(topo, nlocal, policy, by_thread))

    containing = _containing(topo, policy.target)
    cpusets: list[frozenset[int]] = []
    for i in range(nlocal):
        pu = places[i % len(places)]
        obj = containing.get(pu)
        if obj is None:  # an inconsistent topology: the PU is in no such object
            return Bindings(None, f"cpu {pu} is in no {policy.target} object: not binding")
        cpusets.append(obj)
    return Bindings(tuple(cpusets))


def _counted_bindings(topo: Topology, nlocal: int, policy: BindPolicy, mapping: str
                      ) -> Bindings:
    """Hydra's ``core:N``: each rank on N neighbouring objects of the bind type, taken
    within one mapping domain (the node, or a numa/package/l3cache for those map-by),
    the domains taking turns as for one object per rank."""
    # Neighbours: a core's hardware threads before the next core's.
    order = [pu for core in sorted(sorted(c) for c in topo.cores) for pu in core]
    containing = _containing(topo, policy.target)
    domains: list[frozenset[int]] = [frozenset(topo.pus)]
    if mapping in ("numa", "package", "l3cache"):
        domains = list({"numa": topo.numa_nodes, "package": topo.packages,
                        "l3cache": topo.l3caches}[mapping])
    per_domain: list[list[int]] = []  # chunk numbers per domain
    chunks: list[frozenset[int]] = []
    for domain in domains:
        objs: list[frozenset[int]] = []
        for pu in order:
            obj = containing.get(pu)
            if pu in domain and obj is not None and obj not in objs:
                objs.append(obj)
        mine = []
        for k in range(0, len(objs) - policy.count + 1, policy.count):
            mine.append(len(chunks))
            chunks.append(frozenset().union(*objs[k:k + policy.count]))
        per_domain.append(mine)
    ordered = [chunks[c] for c in _round_robin(per_domain)]
    if not ordered:
        return Bindings(None, f"fewer than {policy.count} {policy.target} objects per "
                              f"{'node' if len(domains) == 1 else mapping}: not binding")
    if nlocal > len(ordered) and not policy.overload_allowed:
        return Bindings(None, f"{nlocal} ranks with {policy.count} {policy.target} objects "
                              f"each, room for {len(ordered)}: not binding (use --bind-to "
                              f"{policy.target}:{policy.count}:{OVERLOAD_ALLOWED} to share)")
    return Bindings(tuple(ordered[i % len(ordered)] for i in range(nlocal)))


def _user_bindings(topo: Topology, nlocal: int, policy: BindPolicy) -> Bindings:
    usable = frozenset(topo.pus)
    missing = frozenset().union(*policy.user_sets) - usable
    if missing:  # (every one named at once, not the first set's)
        which = (f"cpu {format_cpuset(missing)} is" if len(missing) == 1
                 else f"cpus {format_cpuset(missing)} are")
        raise BindingError(f"--bind-to {policy}: {which} not usable on this node "
                           f"(usable: {format_cpuset(usable)})")
    sets = policy.user_sets
    notice = None
    if nlocal > len(sets):
        notice = f"{nlocal} ranks, {len(sets)} user cpu sets: reusing them round robin"
    return Bindings(tuple(sets[i % len(sets)] for i in range(nlocal)), notice)


def _places(topo: Topology, mapping: str, *, by_thread: bool, compact: bool) -> list[int]:
    """Every place (as the PU that stands for it) in the order ranks take them.

    A place is a core (its lowest PU) unless ``by_thread``, then each PU.
    """
    cores = [sorted(c) for c in topo.cores]
    if mapping.startswith("ppr:"):  # N places of each object, object after object
        _, count, kind = mapping.split(":")
        if kind == "hwthread":
            return [pu for core in cores for pu in core]  # (one place each)
        if kind == "core":
            return [pu for core in cores for pu in _spread_within([core], by_thread)[:int(count)]]
        owners = {"numa": topo.numa_nodes, "package": topo.packages,
                  "l3cache": topo.l3caches}[kind]
        return [pu for owner in owners
                for pu in _spread_within([c for c in cores if c[0] in owner],
                                         by_thread)[:int(count)]]
    if mapping == "hwthread" or (mapping == "slot" and compact):
        # Compact: a core's hardware threads, then the next core.
        return [pu for core in cores for pu in core]
    if mapping in ("slot", "core"):
        return _spread_within(cores, by_thread)
    objects = {"numa": topo.numa_nodes, "package": topo.packages, "l3cache": topo.l3caches}
    groups: list[list[list[int]]] = [[] for _ in objects[mapping]]
    for core in cores:
        for g, obj in enumerate(objects[mapping]):
            if core[0] in obj:
                groups[g].append(core)
                break
    return _round_robin([_spread_within(g, by_thread) for g in groups])


def _spread_within(cores: list[list[int]], by_thread: bool) -> list[int]:
    """First PU of every core, then (by_thread) second PU of every core, and so on."""
    if not by_thread:
        return [core[0] for core in cores]
    depth = max((len(c) for c in cores), default=0)
    return [core[j] for j in range(depth) for core in cores if j < len(core)]


def _round_robin(lists: list[list[int]]) -> list[int]:
    """One from each list in turn, skipping lists already used up."""
    out: list[int] = []
    for j in range(max((len(x) for x in lists), default=0)):
        out.extend(x[j] for x in lists if j < len(x))
    return out


def _containing(topo: Topology, target: str) -> dict[int, frozenset[int]]:
    """PU -> the cpuset of the ``target`` object that contains it."""
    if target == "hwthread":
        return {pu: frozenset({pu}) for pu in topo.pus}
    objects = {
        "core": topo.cores,
        "l3cache": topo.l3caches,
        "numa": topo.numa_nodes,
        "package": topo.packages,
    }[target]
    out: dict[int, frozenset[int]] = {}
    for obj in objects:
        for pu in obj:
            out.setdefault(pu, obj)
    return out


def _overload_notice(topo: Topology, nlocal: int, policy: BindPolicy, by_thread: bool) -> str:
    ncores, npus = len(topo.cores), len(topo.pus)
    force = f"--bind-to {policy.target}:{OVERLOAD_ALLOWED}"
    if not by_thread and ncores < nlocal <= npus:
        return (
            f"{nlocal} ranks on {ncores} cores: not binding (use --bind-to hwthread to bind "
            f"one rank per hardware thread, or {force} to share cores)"
        )
    return (
        f"{nlocal} ranks on {ncores} cores ({npus} hardware threads): not binding "
        f"(use {force} to force)"
    )


def report_line(rank: int, host: str, cpus: frozenset[int] | None) -> str:
    """One ``--report-bindings`` line: ``rank 3 on node1: cpus 2-3`` or ``... not bound``."""
    if cpus is None:
        return f"rank {rank} on {host}: not bound"
    return f"rank {rank} on {host}: cpus {format_cpuset(cpus)}"
