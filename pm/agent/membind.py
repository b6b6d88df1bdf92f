"""Memory binding: srun's ``--mem-bind`` and Hydra's ``-membind``.

A rank's NUMA memory policy (``set_mempolicy(2)``) is inherited across fork and
exec, so the agent sets it on its own thread around the rank's spawn and puts
its own back at once (:func:`pm.agent.spawn.spawn`), as it does with the CPU
affinity.  Nothing runs in the rank.

The options' values (:func:`parse`) become one spelling, carried in the plan:

* ``none``: the ranks keep the kernel's default (first touch);
* ``local``: each rank's memory on the NUMA nodes of its CPUs (all of the
  node's when it is not bound);
* ``rank``: local rank *i* on NUMA node *i* modulo their number;
* ``map:N,M,...`` / ``mask:0x1,0x2,...``: local rank *i* on the *i*-th node or
  mask (modulo the list's length; srun's ``map_mem``, ``mask_mem``);
* ``bind:LIST`` / ``interleave:LIST``: every rank on (interleaved over) the
  nodes of ``LIST`` (``0-1,3``; Hydra's; ``bind`` alone is ``local``);

prefixed by ``prefer,`` for srun's ``prefer``: the (first) node is preferred,
others allowed when it is full.  srun's ``verbose`` is ``--report-bindings``;
its ``quiet``, ``sort`` and ``nosort`` change nothing here.
"""

from __future__ import annotations

import os

from pm.proto.errors import PMError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (options parse here)
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Mapping, Sequence

    _Syscall = Callable[..., int]

#: A memory policy: set_mempolicy(2)'s mode and the NUMA nodes it names.
Policy = tuple[int, tuple[int, ...]]

#: set_mempolicy(2)'s modes.
MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3

_MODE_NAMES = {MPOL_DEFAULT: "default", MPOL_PREFERRED: "preferred", MPOL_BIND: "bind",
               MPOL_INTERLEAVE: "interleave"}

#: (set_mempolicy, get_mempolicy) by machine.
_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236), "riscv64": (237, 236),
             "ppc64le": (261, 260), "ppc64": (261, 260), "s390x": (270, 269)}

#: Nodes a mask can name (bits), as numactl's default.
_MAX_NODES = 1024

_SRUN_HELP = ("[verbose,][prefer,]TYPE, TYPE none, local, rank, map_mem:NODE,... or "
              "mask_mem:MASK,... (or Hydra's firsttouch, bind:NODES, interleave:NODES)")
_HYDRA_HELP = "firsttouch, bind:NODES or interleave:NODES (NODES like 0-1,3)"


class MemBindError(PMError):
    """A memory binding that cannot be given here."""


def _nodes(text: str, what: str) -> tuple[int, ...]:
    """``0-1,3`` -> (0, 1, 3), in the order given; raises ValueError naming ``what``."""
    from pm.agent.topology import cpu_range

    out: list[int] = []
    for part in text.split(","):
        bounds = cpu_range(part)
        if bounds is None or bounds[1] < bounds[0] or bounds[1] >= _MAX_NODES:
            raise ValueError(f"{what}: {part!r} is not a NUMA node or range of them")
        out.extend(range(bounds[0], bounds[1] + 1))
    return tuple(dict.fromkeys(out))


def _repeated(text: str, what: str) -> str:
    """srun's ``0*2,1*2`` in a list: each item before ``*`` that many times."""
    out = []
    for part in text.split(","):
        item, star, count = part.partition("*")
        if star and (not count.isdecimal() or not 0 < int(count) <= _MAX_NODES):
            raise ValueError(f"{what}: {part!r} repeats an item a number of times (0*2)")
        out += [item] * (int(count) if star else 1)
    return ",".join(out)


def _listed(text: str, what: str) -> list[int]:
    """A node a rank: ``0,1,1`` (repeats kept, unlike a set of nodes)."""
    out = []
    for part in text.split(","):
        if not part.isdecimal() or int(part) >= _MAX_NODES:
            raise ValueError(f"{what}: {part!r} is not a NUMA node")
        out.append(int(part))
    return out


def _masks(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        try:
            mask = int(part, 16)
        except ValueError:
            raise ValueError(f"mask_mem: {part!r} is not a hexadecimal mask") from None
        if mask <= 0 or mask >= 1 << _MAX_NODES:
            raise ValueError(f"mask_mem: {part!r} names no NUMA node")
        out.append(mask)
    return tuple(out)


def parse(value: str) -> tuple[str, bool]:
    """srun's ``--mem-bind`` or Hydra's ``-membind`` value -> (the plan's spelling,
    verbose).  Raises ValueError saying what is wrong."""
    if value.partition(":")[0] in ("firsttouch", "nexttouch", "bind", "interleave"):
        return parse_hydra(value), False
    return parse_srun(value)


def parse_srun(value: str) -> tuple[str, bool]:
    """srun's ``--mem-bind`` value -> (the plan's spelling, verbose).  Raises ValueError.

    Words before and after the type are srun's modifiers; a list (``map_mem:0,1``)
    takes the rest of the value, as in srun."""
    kind, prefer, verbose = "", False, False
    rest = value
    while rest:
        word, _, rest = rest.partition(",")
        low = word.lower()
        if low in ("quiet", "q", "sort", "nosort"):
            continue
        if low in ("verbose", "v"):
            verbose = True
        elif low in ("prefer", "p"):
            prefer = True
        elif kind:
            raise ValueError(f"{word!r}: one memory binding at a time (this has {kind})")
        elif low in ("none", "no", "local", "rank"):
            kind = {"no": "none"}.get(low, low)
        elif low.startswith(("map_mem:", "map_mem=")):
            listed = _repeated(f"{word[8:]},{rest}".rstrip(","), "map_mem")
            kind = "map:" + ",".join(str(n) for n in _listed(listed, "map_mem"))
            rest = ""
        elif low.startswith(("mask_mem:", "mask_mem=")):
            listed = _repeated(f"{word[9:]},{rest}".rstrip(","), "mask_mem")
            kind = "mask:" + ",".join(hex(m) for m in _masks(listed))
            rest = ""
        else:
            raise ValueError(f"{word!r} is not one of {_SRUN_HELP}")
    if not kind:
        if not verbose:
            raise ValueError(f"no binding: {_SRUN_HELP}")
        kind = "none"
    if prefer and kind != "none":
        kind = "prefer," + kind
    return kind, verbose


def parse_hydra(value: str) -> str:
    """Hydra's ``-membind`` value -> the plan's spelling.  Raises ValueError."""
    policy, colon, nodes = value.partition(":")
    if policy == "firsttouch" and not colon:
        return "none"
    if policy == "bind" and not colon:
        return "local"
    if policy in ("bind", "interleave") and colon:
        return f"{policy}:" + ",".join(map(str, _nodes(nodes, policy)))
    if policy == "nexttouch":
        raise ValueError("nexttouch: Linux does not migrate pages on next touch")
    raise ValueError(f"{value!r} is not one of {_HYDRA_HELP}")


def numa_nodes(root: str = "/sys/devices/system/node") -> dict[int, frozenset[int]]:
    """This machine's NUMA nodes that hold memory -> their CPUs ({} if unknown)."""
    from pm.agent.topology import parse_cpulist

    try:
        with open(os.path.join(root, "has_memory")) as f:
            having = f.read().strip()
    except OSError:
        return {}
    out: dict[int, frozenset[int]] = {}
    for node in _nodes(having, "has_memory") if having else ():
        try:
            with open(os.path.join(root, f"node{node}", "cpulist")) as f:
                text = f.read().strip()
            out[node] = parse_cpulist(text) if text else frozenset()
        except (OSError, ValueError):
            out[node] = frozenset()
    return out


def rank_policy(spec: str, local_rank: int, cpus: frozenset[int] | None,
                nodes: Mapping[int, frozenset[int]], host: str
                ) -> Policy | None:
    """The (mode, NUMA nodes) of local rank ``local_rank`` (bound to ``cpus``) under
    ``spec`` (:func:`parse_srun`'s or :func:`parse_hydra`'s) on a node with ``nodes``
    (:func:`numa_nodes`); None: the default.  Raises :class:`MemBindError`."""
    _, prefer, kind = spec.rpartition("prefer,")
    kind, _, arg = kind.partition(":")
    mode = MPOL_BIND
    if kind == "none":
        return None
    if not nodes:
        raise MemBindError(f"{host} says nothing of its NUMA nodes (no "
                           "/sys/devices/system/node): its memory cannot be bound")
    if kind == "local":
        chosen = tuple(n for n, c in sorted(nodes.items()) if cpus is None or c & cpus)
        chosen = chosen or tuple(sorted(nodes))  # (CPUs of memory-less nodes only)
    elif kind == "rank":
        order = sorted(nodes)
        chosen = (order[local_rank % len(order)],)
    elif kind == "map":
        listed = _listed(arg, "map_mem")
        chosen = (listed[local_rank % len(listed)],)
    elif kind == "mask":
        masks = _masks(arg)
        mask = masks[local_rank % len(masks)]
        chosen = tuple(n for n in range(mask.bit_length()) if mask >> n & 1)
    elif kind in ("bind", "interleave"):
        chosen = _nodes(arg, kind)
        if kind == "interleave":
            mode = MPOL_INTERLEAVE
    else:
        raise MemBindError(f"unknown memory binding {spec!r}")
    missing = [n for n in chosen if n not in nodes]
    if missing:
        have = ",".join(map(str, sorted(nodes)))
        raise MemBindError(f"NUMA node {missing[0]} is not one of {host}'s with memory "
                           f"({have})")
    if prefer and mode == MPOL_BIND:
        return MPOL_PREFERRED, chosen[:1]
    return mode, chosen


def describe(policy: tuple[int, Sequence[int]] | None) -> str:
    """``memory bind to NUMA node 0`` and the like, for --report-bindings."""
    if policy is None:
        return "memory not bound"
    mode, nodes = policy
    which = "node" if len(nodes) == 1 else "nodes"
    return f"memory {_MODE_NAMES.get(mode, str(mode))} NUMA {which} {','.join(map(str, nodes))}"


class ThreadPolicy:
    """The calling thread's memory policy, set for a spawn and put back (a rank inherits
    its starter's).  Raises :class:`MemBindError` if the kernel refuses it."""

    __slots__ = ("_call", "_old", "_want")

    def __init__(self, policy: tuple[int, Sequence[int]]) -> None:
        self._want = policy
        self._old: Policy | None = None

    def __enter__(self) -> ThreadPolicy:
        self._old = _get()
        _set(*self._want)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._old is not None:
            try:
                _set(*self._old)
            except MemBindError:
                _set(MPOL_DEFAULT, ())


#: libc's syscall() and this machine's (set_mempolicy, get_mempolicy) numbers, found once
#: (every rank of a node is started under a policy).
_CALLS: list[tuple[_Syscall, int, int]] = []


def _calls() -> tuple[_Syscall, int, int]:
    if not _CALLS:
        import ctypes
        import platform

        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None:
            raise MemBindError(f"memory binding is not known on {platform.machine()}")
        call: _Syscall = ctypes.CDLL(None, use_errno=True).syscall
        _CALLS.append((call, *numbers))
    return _CALLS[0]


def _mask_words(nodes: Sequence[int]) -> ctypes.Array[ctypes.c_ulong]:
    import ctypes

    words = (ctypes.c_ulong * (_MAX_NODES // 64))()
    for n in nodes:
        words[n // 64] |= 1 << (n % 64)
    return words


def _set(mode: int, nodes: Sequence[int]) -> None:
    import ctypes

    call, number, _ = _calls()
    mask = _mask_words(nodes) if nodes else None
    rc = call(ctypes.c_long(number), ctypes.c_int(mode), mask,
              ctypes.c_ulong(_MAX_NODES + 1 if nodes else 0))
    if rc != 0:
        err = ctypes.get_errno()
        raise MemBindError(f"cannot bind memory ({describe((mode, nodes))}): "
                           f"{os.strerror(err)}")


def _get() -> Policy:
    import ctypes

    call, _, number = _calls()
    mode = ctypes.c_int(0)
    mask = _mask_words(())
    rc = call(ctypes.c_long(number), ctypes.byref(mode), mask,
              ctypes.c_ulong(_MAX_NODES + 1), None, ctypes.c_ulong(0))
    if rc != 0:
        raise MemBindError(f"cannot read the memory policy: {os.strerror(ctypes.get_errno())}")
    words = list(mask)
    nodes = tuple(i * 64 + b for i, w in enumerate(words) for b in range(64) if w >> b & 1)
    return mode.value, nodes
