"""Host lists: Slurm bracket syntax, Hydra's ``-hosts`` option and host files.

Pure text processing; nothing here resolves names or touches the network.

Bracket syntax (Slurm's): ``node[01-04,07]`` is node01 node02 node03 node04
node07.  A range keeps the width of its low bound, so ``[08-10]`` gives 08 09
10 and ``[8-10]`` gives 8 9 10.  A name may hold several bracket groups, which
multiply out with the leftmost varying slowest: ``rack[1-2]-n[1-2]`` is
rack1-n1 rack1-n2 rack2-n1 rack2-n2.  Commas outside brackets separate names.
"""

from __future__ import annotations

import itertools

from pm.proto.errors import PMError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pm.quick reads hosts)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "BATCH_HOSTFILES",
    "MAX_HOSTS",
    "HostSlots",
    "HostlistError",
    "batch_hostfile",
    "batch_hosts",
    "compress",
    "expand",
    "merged",
    "parse_hostfile",
    "parse_hosts_option",
]

# A typo such as node[1-1000000000] must fail, not eat the memory of the head.
MAX_HOSTS = 1_000_000

_SPECIAL = frozenset("[],")


def _digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits, at least one (no ``re``: pmrun's quick path)."""
    return text.isascii() and text.isdigit()


class HostlistError(PMError, ValueError):
    """A host list, ``-hosts`` option or host file that cannot be parsed."""


class HostSlots:
    """One host and the number of rank slots given for it (``None``: not given).

    A plain class, not a dataclass: a host list is read before pmrun's heavy imports
    (``pm.bootstrap.early``), and ``dataclasses`` costs 5 ms of CPU to import."""

    __slots__ = ("host", "slots")
    host: str
    slots: int | None

    def __init__(self, host: str, slots: int | None) -> None:
        self.host = host
        self.slots = slots

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostSlots):
            return NotImplemented
        return (self.host, self.slots) == (other.host, other.slots)

    def __hash__(self) -> int:
        return hash((self.host, self.slots))

    def __repr__(self) -> str:
        return f"HostSlots(host={self.host!r}, slots={self.slots!r})"


def _split_top(spec: str, sep: str) -> list[str]:
    """Split ``spec`` at each ``sep`` that is outside brackets; check bracket balance."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(spec):
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' in host list {spec!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"unbalanced ']' in host list {spec!r}")
            depth = 0
        elif ch == sep and not depth:
            parts.append(spec[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unbalanced '[' in host list {spec!r}")
    parts.append(spec[start:])
    return parts


def _bracket_values(body: str, name: str) -> list[str]:
    """The strings a bracket body such as ``01-04,07`` stands for."""
    out: list[str] = []
    for item in body.split(","):
        item = item.strip()
        lo, dash, hi = item.partition("-")
        if not _digits(lo) or (dash and not _digits(hi)):
            raise HostlistError(f"bad range {item!r} in host name {name!r}")
        if not dash:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a:
            raise HostlistError(f"bad range {item!r} in host name {name!r}: end before start")
        if b - a + 1 + len(out) > MAX_HOSTS:
            raise HostlistError(f"range {item!r} in host name {name!r} is too large")
        width = len(lo)
        out.extend(str(x).zfill(width) for x in range(a, b + 1))
    return out


def _expand_name(name: str) -> list[str]:
    """Expand one host name (no top-level commas) with any number of bracket groups."""
    if not name:
        raise HostlistError("empty host name")
    if any(ch.isspace() for ch in name):
        raise HostlistError(f"white space inside host name {name!r}")
    pieces: list[list[str]] = []
    pos = 0
    count = 1
    while True:
        lb = name.find("[", pos)
        if lb < 0:
            pieces.append([name[pos:]])
            break
        rb = name.find("]", lb)  # balance was checked by _split_top
        pieces.append([name[pos:lb]])
        values = _bracket_values(name[lb + 1 : rb], name)
        count *= len(values)
        if count > MAX_HOSTS:
            raise HostlistError(f"host name {name!r} expands to too many hosts")
        pieces.append(values)
        pos = rb + 1
    return ["".join(p) for p in itertools.product(*pieces)]


def expand(spec: str) -> list[str]:
    """Expand a Slurm-style host list into host names, in order, duplicates kept.

    ``expand("node[01-02,07],login1")`` is ``["node01", "node02", "node07",
    "login1"]``.  White space around names is ignored; an all-blank ``spec``
    gives ``[]``.  ``HostlistError`` for unbalanced or nested brackets, a
    range that is not ``N`` or ``N-M`` with ``N <= M``, an empty name (as in
    ``a,,b``), or more than ``MAX_HOSTS`` hosts.
    """
    if not spec.strip():
        return []
    out: list[str] = []
    for name in _split_top(spec, ","):
        if not name.strip():
            raise HostlistError(f"empty host name in host list {spec!r}")
        out.extend(_expand_name(name.strip()))
        if len(out) > MAX_HOSTS:
            raise HostlistError(f"host list {spec!r} expands to too many hosts")
    return out


def _split_number(host: str) -> tuple[str, str, str]:
    """``host`` as (prefix, last run of digits, suffix); digits may be empty."""
    end = len(host)
    while end and not ("0" <= host[end - 1] <= "9"):
        end -= 1
    if not end:
        return host, "", ""
    start = end
    while start and "0" <= host[start - 1] <= "9":
        start -= 1
    return host[:start], host[start:end], host[end:]


class _Range:
    """Consecutive values ``lo .. hi`` printed with the width of ``lo_text``."""

    __slots__ = ("hi", "lo", "lo_text")
    lo_text: str
    lo: int
    hi: int

    def __init__(self, lo_text: str, lo: int, hi: int) -> None:
        self.lo_text = lo_text
        self.lo = lo
        self.hi = hi

    def __str__(self) -> str:
        if self.lo == self.hi:
            return self.lo_text
        return f"{self.lo_text}-{str(self.hi).zfill(len(self.lo_text))}"


def compress(hosts: Sequence[str]) -> str:
    """A short host list that ``expand`` turns back into ``hosts`` exactly.

    Meant for display.  Order and duplicates are kept: hosts that follow each
    other and differ only by consecutive values of their last number become a
    range (``n1,n2,n3`` -> ``n[1-3]``), zero padding is kept (``n08,n09,n10``
    -> ``n[08-10]``), and neighbouring ranges of one prefix and suffix share a
    bracket (``n[1-3,7]``).  ``HostlistError`` for an empty name or one holding
    white space, a comma or a bracket.
    """
    # (prefix, suffix, ranges); a host without digits is a group with no ranges.
    groups: list[tuple[str, str, list[_Range]]] = []
    for host in hosts:
        if not host or _SPECIAL.intersection(host) or any(c.isspace() for c in host):
            raise HostlistError(f"host name {host!r} cannot be written in a host list")
        prefix, digits, suffix = _split_number(host)
        if not digits:
            groups.append((host, "", []))
            continue
        value = int(digits)
        if groups and groups[-1][2] and groups[-1][:2] == (prefix, suffix):
            ranges = groups[-1][2]
            last = ranges[-1]
            # Extend the range only if expand() would print this very text for hi+1.
            if value == last.hi + 1 and str(value).zfill(len(last.lo_text)) == digits:
                last.hi = value
            else:
                ranges.append(_Range(digits, value, value))
        else:
            groups.append((prefix, suffix, [_Range(digits, value, value)]))
    return ",".join(_format_group(*g) for g in groups)


def _format_group(prefix: str, suffix: str, ranges: list[_Range]) -> str:
    if not ranges:
        return prefix
    if len(ranges) == 1 and ranges[0].lo == ranges[0].hi:
        return f"{prefix}{ranges[0].lo_text}{suffix}"
    return f"{prefix}[{','.join(map(str, ranges))}]{suffix}"


def _parse_slots(text: str, where: str) -> int:
    if not _digits(text):
        raise HostlistError(f"bad slot count {text!r} in {where!r}")
    n = int(text)
    if n < 1:
        raise HostlistError(f"slot count must be >= 1, got {text!r} in {where!r}")
    return n


def _name_and_slots(item: str) -> tuple[str, int | None]:
    """Split ``host[:slots]`` at the last ':' outside brackets."""
    colon = item.rfind(":")
    if colon < 0 or colon < item.rfind("]"):
        return item, None
    first = item.find(":", item.rfind("]") + 1)
    if first < colon:  # (host:2:3: which is the count?)
        raise HostlistError(f"bad slot count {item[first + 1:]!r} in {item!r}")
    return item[:colon], _parse_slots(item[colon + 1 :].strip(), item)


def _entries(entries: Iterable[tuple[str, int | None]]) -> list[HostSlots]:
    """The entries as given, in order, each name checked."""
    out: list[HostSlots] = []
    for host, slots in entries:
        if not host.isprintable() or any(c.isspace() for c in host):  # (a NUL, a tab...)
            raise HostlistError(f"{host!r} is not a host name (it holds a control or "
                                "space character)")
        out.append(HostSlots(host, slots))
    return out


def merged(entries: Iterable[HostSlots]) -> list[HostSlots]:
    """Repeated hosts merged, first-seen order, adding up slots.

    A host listed more than once gets the sum of its slot counts, each
    occurrence without one counting 1 (one line of a host file is one slot);
    a host listed once keeps ``None`` if it had no count.
    """
    seen: dict[str, list[int | None]] = {}
    for e in entries:
        seen.setdefault(e.host, []).append(e.slots)
    out: list[HostSlots] = []
    for host, counts in seen.items():
        if len(counts) == 1:
            out.append(HostSlots(host, counts[0]))
        else:
            out.append(HostSlots(host, sum(1 if c is None else c for c in counts)))
    return out


def is_this_machine(host: str) -> bool:
    """Whether ``host`` names the machine we run on (by name only: no DNS, no ssh)."""
    import _socket

    here = _socket.gethostname()
    return (host in ("localhost", "localhost.localdomain", "127.0.0.1", "::1", here,
                     here.split(".")[0]) or host.startswith("127."))


def parse_hosts_option(spec: str, merge: bool = True) -> list[HostSlots]:
    """Parse Hydra's ``-hosts`` value, e.g. ``"h1,h2:4,node[1-3]:2"``.

    Items are separated by commas outside brackets; each is a host list name
    with an optional ``:slots``, and every host it expands to gets those slots.
    A host named more than once is merged as in ``parse_hostfile`` (``merge``
    False: every entry as given, in order, as Hydra deals ranks to them).
    ``HostlistError`` for a bad name, a bad count or a count below 1.
    """
    if not spec.strip():
        return []
    entries: list[tuple[str, int | None]] = []
    for item in _split_top(spec, ","):
        name, slots = _name_and_slots(item.strip())
        if not name.strip():
            raise HostlistError(f"empty host name in -hosts {spec!r}")
        entries.extend((h, slots) for h in _expand_name(name.strip()))
    return merged(_entries(entries)) if merge else _entries(entries)


_IGNORED_KEYS = frozenset({"max_slots", "max-slots"})


def parse_hostfile(text: str, merge: bool = True) -> list[HostSlots]:
    """Parse a Hydra/MPICH or Open MPI host file.

    One host per line: ``host``, ``host:4`` or ``host slots=4``
    (``max_slots=``/``max-slots=`` are accepted and ignored).  ``#`` starts a
    comment; blank lines are skipped; bracket syntax is expanded.  A host on
    several lines gets the sum of their slots, each line without a count
    counting 1, and keeps the place where it was first seen (``merge`` False:
    every line's hosts as given, in order, as Hydra deals ranks to them).
    ``HostlistError`` (naming the line) for anything else.
    """
    entries: list[tuple[str, int | None]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        first, *options = line.split()
        where = f"line {lineno}: {line}"
        try:
            name, slots = _name_and_slots(first)
            for opt in options:
                key, eq, value = opt.partition("=")
                if key == "slots" and eq:
                    if slots is not None:
                        raise HostlistError(f"slot count given twice in {where!r}")
                    slots = _parse_slots(value, where)
                elif key in _IGNORED_KEYS and eq:
                    continue
                else:
                    raise HostlistError(f"unknown option {opt!r} in host file {where!r}")
            hosts = expand(name)
        except HostlistError as e:
            if where in str(e):
                raise
            raise HostlistError(f"host file {where}: {e}") from e
        if not hosts:
            raise HostlistError(f"empty host name in host file {where}")
        entries.extend((h, slots) for h in hosts)
    return merged(_entries(entries)) if merge else _entries(entries)


#: Host files other batch systems give a job: one line per slot (host names repeat).
BATCH_HOSTFILES = (("PBS_NODEFILE", "PBS/Torque"), ("LSB_DJOB_HOSTFILE", "LSF"))


def batch_hostfile(env: Mapping[str, str], only: str | None = None
                   ) -> tuple[str, str] | None:
    """``(variable, path)`` of the host file a PBS/Torque or LSF job has, if any (``only``:
    that variable's)."""
    for var, _system in BATCH_HOSTFILES:
        if only is not None and var != only:
            continue
        path = env.get(var)
        if path:
            return var, path
    return None


def batch_hosts(env: Mapping[str, str], only: str | None = None) -> list[HostSlots] | None:
    """The hosts and slots of a PBS/Torque (``PBS_NODEFILE``) or LSF
    (``LSB_DJOB_HOSTFILE``) job (``only``: that variable's), or None outside one.
    ``HostlistError`` names the file when it cannot be read."""
    found = batch_hostfile(env, only)
    if found is None:
        return None
    var, path = found
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise HostlistError(f"{var}={path}: {exc.strerror}") from None
    hosts = parse_hostfile(text)
    if not hosts:
        raise HostlistError(f"{var}={path}: no hosts in the file")
    return [HostSlots(h.host, h.slots or 1) for h in hosts]  # each line is one slot
