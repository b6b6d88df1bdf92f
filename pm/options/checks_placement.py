"""Value checkers of where and how the ranks run: hosts and host files (GNU
parallel's sshlogins too), the network, binding, mapping and distribution (Open MPI's,
srun's, Flux's and Hydra's spellings), CPUs, memory and GPUs.

Each takes (text, option as the user spelled it) and returns the value, or raises
UsageError naming the option and what was wrong (:mod:`pm.options.checks`).
"""

from __future__ import annotations

from pm.options.checks import MOST_RANKS, _or, file_text, readable_file, text, whole
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping


#: Open MPI's --rank-by objects: a node's ranks numbered consecutively (by whichever of
#: its objects: pmrun binds a node's ranks in that order), or one a node in turn.
_RANK_BY = {"slot": "block", "hwthread": "block", "core": "block", "l1cache": "block",
            "l2cache": "block", "l3cache": "block", "package": "block", "socket": "block",
            "numa": "block", "board": "block", "fill": "block", "span": "block",
            "node": "cyclic"}


def rank_by(value: str, opt: str) -> str:
    """Open MPI's ``--rank-by OBJECT[:SPAN|:FILL]``: block or cyclic (:data:`_RANK_BY`)."""
    word = value.split(":")[0].lower()
    if word not in _RANK_BY:
        raise UsageError(f"{opt} takes {_or(sorted(_RANK_BY))}, not {value!r}")
    return _RANK_BY[word]


def cpu_list(value: str, opt: str) -> str:
    """Open MPI's ``--cpu-list 0,2-3``: CPU numbers and ranges, as ``--bind-to user:``."""
    from pm.agent.topology import MOST_CPUS

    cpus: list[str] = []
    for part in value.split(","):
        lo, dash, hi = part.partition("-")
        if not (lo.isdecimal() and (not dash or (hi.isdecimal() and int(hi) >= int(lo)))):
            raise UsageError(f"{opt} takes CPU numbers and ranges (0,2-3), not {value!r}")
        if int(hi if dash else lo) >= MOST_CPUS:
            raise UsageError(f"{opt} {value}: no machine has a CPU {hi if dash else lo} "
                             f"(they go up to {MOST_CPUS - 1} at most)")
        cpus += map(str, range(int(lo), int(hi if dash else lo) + 1))
    return ",".join(cpus)


def _runs(cpus: str) -> str:
    """:func:`cpu_list`'s words again, runs of consecutive CPUs as ranges (pure)."""
    out: list[list[int]] = []
    for cpu in map(int, cpus.split(",")):
        if out and cpu == out[-1][1] + 1:
            out[-1][1] = cpu
        else:
            out.append([cpu, cpu])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in out)


def iface(value: str, opt: str) -> str:
    """An interface name (it must exist here: the head listens on it too) or an address."""
    import socket

    text(value, opt)
    names = [name for _, name in socket.if_nameindex()]
    if value not in names and not _is_address(value):
        some = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UsageError(f"{opt} {value}: no such interface here ({some}) and not an "
                         "IP address")
    return value


def local_address(value: str, opt: str) -> str:
    """Hydra's ``-localhost HOST``: the launching node's address (the name resolved here)."""
    import socket

    text(value, opt)
    if _is_address(value):
        return value
    try:
        return str(socket.getaddrinfo(value, None, socket.AF_INET)[0][4][0])
    except (OSError, UnicodeError):
        raise UsageError(f"{opt} {value}: not an address, and no address for that name "
                         "here") from None


def _is_address(value: str) -> bool:
    import socket

    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
        except OSError:
            continue
        return True
    return False


def bind_to(value: str, opt: str) -> str:
    return _binding(value, opt, "parse_bind", "--bind-to")


#: srun's --cpu-bind types as pmrun's --bind-to targets.
_SRUN_BIND = {"none": "none", "no": "none", "cores": "core", "threads": "hwthread",
              "sockets": "package", "ldoms": "numa", "rank": "core"}


def srun_cpu_bind(value: str, opt: str) -> str:
    """srun's ``--cpu-bind=[quiet|verbose,]TYPE``, checked (:func:`cpu_bind_of` reads it)."""
    cpu_bind_of(value, opt)
    return value


def cpu_bind_of(value: str, opt: str) -> tuple[str, bool]:
    """srun's ``--cpu-bind`` as pmrun's ``--bind-to`` value, and whether it says verbose:
    none, cores, threads, sockets, ldoms, ``map_cpu:0,2`` (a CPU each rank),
    ``mask_cpu:0x3,0xc`` (a mask each rank).  UsageError for what pmrun cannot do."""
    verbose = False
    rest = value
    while True:
        word, sep, tail = rest.partition(",")
        if word.lower() in ("verbose", "v", "quiet", "q") and sep:
            verbose = verbose or word.lower() in ("verbose", "v")
            rest = tail
            continue
        break
    kind, colon, body = rest.partition(":")
    kind = kind.lower()
    if kind in ("verbose", "v", "quiet", "q") and not colon:
        return "core", kind in ("verbose", "v")  # srun's default type: cores
    if kind in _SRUN_BIND and not colon:
        return _SRUN_BIND[kind], verbose
    try:
        if kind == "map_cpu" and body:
            ranks = [c.replace("*", "x") for c in body.split(",")]
            if all(r.partition("x")[0].isdecimal() for r in ranks):
                return _binding("user:" + ",".join(ranks), opt, "parse_bind", "--bind-to"), verbose
        if kind == "mask_cpu" and body:
            sets = []
            for mask in body.split(","):
                bits = int(mask, 16)
                if bits <= 0:
                    raise ValueError(mask)
                sets.append("+".join(str(b) for b in range(bits.bit_length()) if bits >> b & 1))
            return "user:" + ",".join(sets), verbose
    except ValueError:
        pass
    raise UsageError(f"{opt} takes srun's none, cores, threads, sockets, ldoms, map_cpu:LIST "
                     f"or mask_cpu:LIST (verbose, before them), not {value!r}")


def _pe_of(value: str) -> tuple[str, str]:
    """Open MPI's ``TARGET:PE=N`` (N cores per rank) as (TARGET, N); (value, "") without."""
    head, sep, last = value.rpartition(":")
    if sep and last[:3].upper() == "PE=":
        return head, last[3:]
    return value, ""


#: Open MPI's ppr:N:RESOURCE objects, as pmrun's topology names them.
PPR_OBJECTS = {"node": "node", "package": "package", "socket": "package", "numa": "numa",
               "l3cache": "l3cache", "core": "core", "hwthread": "hwthread"}


def _ppr(value: str, opt: str) -> str:
    """Open MPI 4's ``--ppr N:OBJECT``, as ``--map-by ppr:N:OBJECT``."""
    try:
        return map_by(f"ppr:{value}", opt)
    except UsageError:
        raise UsageError(f"{opt} {value!r}: Open MPI's N:RESOURCE takes a count and "
                         f"{_or(sorted(PPR_OBJECTS))}") from None


def map_by(value: str, opt: str) -> str:
    # Open MPI's :OVERSUBSCRIBE means nothing here: pmrun never refuses more ranks than cores.
    value = ":".join(w for w in value.split(":") if w.upper() != "OVERSUBSCRIBE") or "core"
    target, pe = _pe_of(value)
    if target != value:
        if not pe.isdecimal() or int(pe) < 1:
            raise UsageError(f"{opt} {value!r}: PE= takes a number of cores per rank")
        map_by(target, opt)
        return value
    if value.lower().startswith("ppr:"):  # Open MPI's N ranks per node, package, core...
        count, _, per = value[4:].partition(":")
        if per.lower() not in PPR_OBJECTS or not count.isdecimal() or \
                not 1 <= int(count) <= MOST_RANKS:
            raise UsageError(f"{opt} {value!r}: Open MPI's ppr:N:RESOURCE takes a count and "
                             f"{_or(sorted(PPR_OBJECTS))}")
        return value
    if value.lower() == "node":  # Open MPI's: a rank a node, round and round (cyclic)
        return value
    if value.lower().startswith("rankfile"):  # Open MPI 5's rankfile:file=FILE
        key, _, path = value[len("rankfile:"):].partition("=")
        if value[8:9] != ":" or key.lower() != "file" or not path:
            raise UsageError(f"{opt} {value!r}: Open MPI's rankfile mapping is "
                             "rankfile:file=FILE")
        try:
            readable_file(path, opt)
        except UsageError as exc:
            raise UsageError(f"{opt} {value}: {str(exc).rsplit(': ', 1)[-1]}") from None
        return value
    return _binding(value, opt, "parse_map", "--map-by")


#: srun's second and third levels: how a node's tasks spread over its sockets and cores.
_CPU_LEVELS = ("*", "block", "cyclic", "fcyclic")


def rankmap(value: str, opt: str) -> str:
    """Hydra's ``-rankmap``: checked now (pure), read again for the job."""
    from pm.common.rankfile import RankfileError, parse_rankmap

    try:
        parse_rankmap(value)
    except RankfileError as exc:
        raise UsageError(str(exc).replace("-rankmap", opt, 1)) from None
    return value


def distribution(value: str, opt: str) -> str:
    """srun's ``-m``/``--distribution``: ``block`` (the default: each node's ranks in one
    run), ``cyclic`` (one rank a node, round and round), ``plane=N`` (N ranks a node at a
    time), each as ``block``, ``cyclic`` or ``plane=N``.  The levels after ``:`` (over a
    node's sockets and cores) and ``,Pack``/``,NoPack`` are taken: within a node, ranks are
    bound as ``--bind-to``/``--map-by`` say."""
    word, _, pack = value.partition(",")
    first, *levels = word.split(":")
    first = first.strip().lower()
    if first.startswith("plane="):
        size = first[len("plane="):]
        if not size.isdecimal() or not 1 <= int(size) <= MOST_RANKS:
            raise UsageError(f"{opt} {value}: plane= takes the ranks a node gets at a time "
                             f"(a number from 1 to {MOST_RANKS})")
        first = f"plane={int(size)}"
    elif first not in ("block", "cyclic", "arbitrary", "*"):
        raise UsageError(f"{opt} takes block, cyclic, plane=N or arbitrary (srun's), not "
                         f"{value!r}")
    if len(levels) > 2 or any(lv.strip().lower() not in _CPU_LEVELS for lv in levels):
        raise UsageError(f"{opt} {value}: after ':' srun takes block, cyclic or fcyclic (how a "
                         "node's ranks spread over its sockets and cores)")
    if pack and pack.strip().lower() not in ("pack", "nopack"):
        raise UsageError(f"{opt} {value}: after ',' srun takes Pack or NoPack")
    return "block" if first == "*" else first


def slurm_distribution(env: Mapping[str, str]) -> str:
    """The allocation's distribution (``SLURM_DISTRIBUTION``, from ``sbatch -m cyclic``),
    which srun would apply: its first level; ``block`` if none or not one pmrun takes."""
    text = env.get("SLURM_DISTRIBUTION", "").strip()
    try:
        given = distribution(text, "SLURM_DISTRIBUTION") if text else "block"
    except UsageError:
        return "block"  # (unknown: the allocation's business, not ours)
    # (arbitrary without its file: sbatch's own placement, which srun's would keep)
    return "block" if given == "arbitrary" and not env.get("SLURM_HOSTFILE") else given


def taskmap(value: str, opt: str) -> str:
    """Flux's ``--taskmap``: ``block``, ``cyclic``, or ``cyclic:N`` (N tasks a node at a time:
    srun's ``plane=N``)."""
    kind, colon, size = value.partition(":")
    if kind == "block" and not colon:
        return "block"
    if kind == "cyclic" and not colon:
        return "cyclic"
    if kind == "cyclic" and size.isascii() and size.isdecimal() and int(size) >= 1:
        return "cyclic" if int(size) == 1 else f"plane={int(size)}"
    raise UsageError(f"{opt} takes block, cyclic or cyclic:N (Flux's), not {value!r}")


def looks_like_distribution(word: str) -> bool:
    """Whether ``word`` after ``-m`` is srun's distribution (``-m cyclic``), not the command
    of GNU parallel's ``-m`` (which takes no value)."""
    first = word.partition(",")[0].split(":")[0].lower()
    return first in ("block", "cyclic", "arbitrary") or first.startswith("plane=")


def _binding(value: str, opt: str, parser: str, spelled: str) -> str:
    from pm.agent import binding

    try:
        getattr(binding, parser)(value)
    except binding.BindingError as exc:  # its message, with the option as the user spelled it
        raise UsageError(str(exc).replace(spelled, opt, 1)) from None
    return value


def hosts(value: str, opt: str) -> str:
    from pm.common.hostlist import HostlistError, parse_hosts_option

    try:
        if not parse_hosts_option(value):
            raise UsageError(f"{opt} names no host")
    except HostlistError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def sshlogin(value: str, opt: str) -> str:
    """GNU parallel's ``-S [N/]HOST,...`` (``:`` is this machine) as a ``-hosts`` value
    (``HOST:N``): N tasks at once on HOST."""
    out = []
    for item in value.split(","):
        count, slash, host = item.strip().rpartition("/")
        if slash and not (count.isdecimal() and int(count) > 0):
            raise UsageError(f"{opt} takes [N/]HOST,... (N tasks at once on HOST), not {item!r}")
        host = "localhost" if host == ":" else host
        out.append(f"{host}:{count}" if slash else host)
    return hosts(",".join(out), opt)


def sshloginfile(value: str, opt: str) -> str:
    """GNU parallel's ``--slf FILE``: a ``-S`` value a line (``#`` comments), as ``-hosts``."""
    readable_file(value, opt)
    try:
        lines = [line.split("#", 1)[0].strip() for line in file_text(value).splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opt} {value}: cannot be read ({exc})") from None
    given = ",".join(line for line in lines if line)
    if not given:
        raise UsageError(f"{opt} {value}: names no host")
    return sshlogin(given, f"{opt} {value}:")


def hostfile(value: str, opt: str) -> str:
    readable_file(value, opt)
    from pm.common.hostlist import HostlistError, parse_hostfile

    try:
        if not parse_hostfile(file_text(value)):
            raise UsageError(f"{opt} {value}: names no host")
    except HostlistError as exc:
        raise UsageError(f"{opt} {value}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opt} {value}: cannot be read ({exc})") from None
    return value


#: srun's --hint words as pmrun's binding (--bind-to, --map-by), which -c N multiplies.
_HINTS = {"nomultithread": ("core", None), "compute_bound": ("core", None),
          "multithread": ("hwthread", "hwthread"), "memory_bound": ("core", "package")}


def srun_hint(value: str, opt: str) -> str:
    """srun's ``--hint``: nomultithread, compute_bound, multithread or memory_bound."""
    word = value.lower()
    if word not in _HINTS:
        raise UsageError(f"{opt} takes {', '.join(_HINTS)}, not {value!r}")
    return word


_FREQ_WORDS = ("low", "medium", "high", "highm1")
_GOVERNORS = ("conservative", "ondemand", "performance", "powersave", "userspace", "schedutil")


def cpu_freq(value: str, opt: str) -> str:
    """srun's ``--cpu-freq [MIN-]MAX[:GOVERNOR]`` or ``GOVERNOR``: kHz or low, medium,
    high, highm1; Slurm's governors."""
    freq, colon, governor = value.partition(":")
    if not colon and freq.lower() in _GOVERNORS:
        return value
    parts = freq.split("-") if freq else []
    good = (len(parts) <= 2 and all(p.isdecimal() or p.lower() in _FREQ_WORDS for p in parts)
            and (not colon or governor.lower() in _GOVERNORS) and (parts or colon))
    if not good:
        raise UsageError(f"{opt} takes srun's frequency: kHz or low, medium, high, highm1, "
                         "as MAX or MIN-MAX, and :GOVERNOR (or a governor alone: "
                         f"{', '.join(_GOVERNORS)}), not {value!r}")
    return value


def gpus_count(value: str, opt: str) -> int:
    """--gpus-per-task N (N >= 1); Hydra's ``auto`` (its default: 0, nothing dealt)."""
    if value.lower() == "auto":
        return 0
    count = whole(1, 4096)(value, opt)
    assert isinstance(count, int)
    return count


def memory_kinds(value: str, opt: str) -> str:
    """Hydra's ``-memory-alloc-kinds``: memory kinds separated by commas, each KIND or
    KIND:RESTRICTORS (``mpi,system,cuda:device``), as MPI 4.1's info key spells them."""
    for kind in value.split(","):
        name, _, restrictors = kind.partition(":")
        words = [name, *restrictors.split(":")] if restrictors else [name]
        if not all(w and all(c.isalnum() or c in "_-" for c in w) for w in words):
            raise UsageError(f"{opt} takes memory kinds separated by commas (mpi,system,"
                             f"cuda:device), not {value!r}")
    return value


def mem_bind(value: str, opt: str) -> str:
    """srun's ``--mem-bind`` / Hydra's ``-membind`` (:func:`pm.agent.membind.parse`)."""
    from pm.agent.membind import parse

    try:
        parse(value)
    except ValueError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def order_nodes(value: str, opt: str) -> str:
    """Hydra's ``-order-nodes``: ASCENDING (UP) or DESCENDING (DOWN)."""
    word = {"ascending": "ascending", "up": "ascending", "descending": "descending",
            "down": "descending"}.get(value.lower())
    if word is None:
        raise UsageError(f"{opt} takes ASCENDING or DESCENDING, not {value!r}")
    return word
