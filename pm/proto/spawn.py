"""Spawn requests (``MPI_Comm_spawn``/``spawn_multiple``) on the PMI wires, sans-IO.

A request is one or more *commands* (program, argv, maxprocs, info keys) plus
the *preput* keys the children find in their new KVS (MPICH's only one is
``PARENT_ROOT_PORT_NAME``).  Facts this relies on (MPICH ``pmi_wire.c``
``PMIU_msg_set_query_spawn``, Hydra ``pmiserv_spawn.c``):

* PMI-1 sends ``mcmd=spawn`` blocks, one per command, each ending in
  ``endcmd``: ``nprocs``, ``execname``, ``totspawns``, ``spawnssofar`` (from
  1), ``argcnt`` and ``arg1..argN``, ``preput_num`` with
  ``preput_key_i``/``preput_val_i`` (from 0; 4.1+ only in the first block,
  older clients repeat them), ``info_num`` with ``info_key_i``/``info_val_i``.
  :class:`pm.proto.pmi1.Pmi1Decoder` hands the blocks over as one command
  whose ``pairs`` are separated by ``("cmd", "spawn")``.
* The PMI-1 reply is ``spawn_result rc=0 errcodes=e0,e1,...`` with one code
  per *process* (the client asserts that count); ``rc`` is mandatory.
* PMI-2 sends one frame: ``ncmds``, ``preputcount`` with ``ppkeyI``/``ppvalI``,
  then per command ``subcmd`` (the program), ``maxprocs``, ``argc`` with
  ``argvI`` and ``infokeycount`` with ``infokeyI``/``infovalI``.  The reply
  ``spawn-response`` must carry ``jobid`` (the children's kvsname).
* Info keys Hydra honours: ``path`` (the program is ``path/execname``),
  ``wdir``, ``host``/``hosts`` (comma-separated) and ``hostfile``; it ignores
  the rest.  pmrun honours those (the host keys at the head,
  :func:`pm.spawned_jobs.info_hosts`) and ``env`` (``VAR=value`` words, separated
  by newlines or spaces): the children's extra environment.
"""

from __future__ import annotations

import os

from pm.proto import pmi1
from pm.proto.errors import ProtocolError
from pm.proto.value import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from pm.proto import pmi2

#: A spawn of more processes than this in one request is refused (a runaway maxprocs).
MAX_PROCS = 1 << 16

#: Seconds a spawned job may outlive the job that spawned it before it is ended.
ORPHAN_GRACE = 5.0


# Plain records, not dataclasses: pmrun's quick phase carries out a one-node job's
# spawns (pm.agent.quick_spawns), and loading the dataclasses machinery would cost the
# first spawn milliseconds.
class SpawnCommand(Value):
    """One program of a spawn: ``argv`` (program first) on ``n`` processes."""

    __slots__ = ("argv", "n", "info")  # noqa: RUF023  # the constructor's order

    def __init__(self, argv: list[str], n: int, info: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.n = n
        self.info = {} if info is None else info

    @property
    def program(self) -> str:
        """The program, in the ``path`` info key's folder when it names none (Hydra's key)."""
        prog, folder = self.argv[0], self.info.get("path")
        return os.path.join(folder, prog) if folder and "/" not in prog else prog

    @property
    def wdir(self) -> str | None:
        return self.info.get("wdir") or None

    @property
    def env(self) -> dict[str, str]:
        """Extra environment from the ``env`` info key (``A=1 B=2`` or one per line)."""
        out: dict[str, str] = {}
        for word in self.info.get("env", "").split():
            name, sep, value = word.partition("=")
            if sep and name:
                out[name] = value
        return out

    def to_wire(self) -> list[Any]:
        return [self.argv, self.n, self.info]

    @classmethod
    def from_wire(cls, obj: Any) -> SpawnCommand:
        argv, n, info = obj
        return cls([str(a) for a in argv], int(n), {str(k): str(v) for k, v in info.items()})


class SpawnRequest(Value):
    """Every command of one spawn and the keys pre-put in the children's KVS.

    ``after_init``: answer once the children need their spawner (every child
    initialized PMI, and one read a pre-put key: :mod:`pm.agent.spawn_answer`),
    not as soon as they are started.  An MPI spawner (PMI-1 ``mcmd=spawn``,
    PMI-2 ``spawn``) waits for its children to connect once answered,
    busy-polling: asleep in the PMI read meanwhile, it leaves the CPUs to the
    children's start.
    """

    __slots__ = ("commands", "preput", "after_init")  # noqa: RUF023  # the constructor's order

    def __init__(self, commands: list[SpawnCommand], preput: dict[str, str] | None = None,
                 after_init: bool = False) -> None:
        self.commands = commands
        self.preput = {} if preput is None else preput
        self.after_init = after_init

    @property
    def size(self) -> int:
        return sum(c.n for c in self.commands)

    def check(self) -> None:
        """ProtocolError for a request that cannot be run as sent."""
        if not self.commands:
            raise ProtocolError("spawn of no command")
        for c in self.commands:
            if not c.argv or not c.argv[0]:
                raise ProtocolError("spawn of a command without a program")
            if c.n < 1:
                raise ProtocolError(f"spawn of {c.argv[0]}: maxprocs {c.n} is below 1")
        if self.size > MAX_PROCS:
            raise ProtocolError(f"spawn of {self.size} processes (at most {MAX_PROCS})")


def _int(value: str | None, what: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise ProtocolError(f"spawn: {what}={value!r} is not an integer") from None


def _numbered(items: list[tuple[str, str]], prefix: str) -> list[str]:
    """Values of ``prefixN`` keys, in N's order (N from any base)."""
    found = []
    for key, value in items:
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.isdecimal():
            found.append((int(rest), value))
    return [v for _, v in sorted(found)]


def _pairs_to_info(keys: list[str], values: list[str]) -> dict[str, str]:
    return dict(zip(keys, values, strict=False))


def parse_pmi1(c: pmi1.Pmi1Command) -> SpawnRequest:
    """The request of a PMI-1 ``mcmd=spawn`` (all its blocks, as the decoder joined them)."""
    blocks: list[list[tuple[str, str]]] = [[]]
    for key, value in c.pairs:
        if key in ("cmd", "mcmd") and value == "spawn":  # (the decoder keeps later ones as mcmd)
            if blocks[-1]:
                blocks.append([])
            continue
        blocks[-1].append((key, value))
    blocks = [b for b in blocks if b]
    if not blocks:
        raise ProtocolError("empty spawn request")
    total = _int(dict(blocks[0]).get("totspawns"), "totspawns")
    if total != len(blocks):
        raise ProtocolError(f"spawn announced {total} commands and sent {len(blocks)}")
    preput: dict[str, str] = {}
    commands = []
    for block in blocks:
        d = dict(block)
        if "execname" not in d:
            raise ProtocolError("spawn block without execname=")
        argc = _int(d.get("argcnt", "0"), "argcnt")
        args = _numbered([(k, v) for k, v in block if k.startswith("arg")], "arg")
        if len(args) != argc:
            raise ProtocolError(f"spawn of {d['execname']}: argcnt={argc} but {len(args)} args")
        # 4.1+ clients send the preputs once, older ones in every block: the same keys.
        preput.update(_pairs_to_info(_numbered(block, "preput_key_"),
                                     _numbered(block, "preput_val_")))
        info = _pairs_to_info(_numbered(block, "info_key_"), _numbered(block, "info_val_"))
        commands.append(SpawnCommand([d["execname"], *args],
                                     _int(d.get("nprocs"), "nprocs"), info))
    req = SpawnRequest(commands, preput, after_init=True)
    req.check()
    return req


def parse_pmi2(c: pmi2.Pmi2Command) -> SpawnRequest:
    """The request of a PMI-2 ``spawn`` frame."""
    pairs = list(c.raw_pairs)
    ncmds = _int(c.get("ncmds"), "ncmds")
    head: list[tuple[str, str]] = []
    blocks: list[list[tuple[str, str]]] = []
    for key, value in pairs:
        if key == "subcmd":
            blocks.append([])
        (blocks[-1] if blocks else head).append((key, value))
    if len(blocks) != ncmds:
        raise ProtocolError(f"spawn announced {ncmds} commands and sent {len(blocks)}")
    preput = _pairs_to_info(_numbered(head, "ppkey"), _numbered(head, "ppval"))
    commands = []
    for block in blocks:
        d = dict(block)
        argc = _int(d.get("argc", "0"), "argc")
        args = _numbered(block, "argv")
        if len(args) != argc:
            raise ProtocolError(f"spawn of {d['subcmd']}: argc={argc} but {len(args)} args")
        info = _pairs_to_info(_numbered(block, "infokey"), _numbered(block, "infoval"))
        commands.append(SpawnCommand([d["subcmd"], *args], _int(d.get("maxprocs"), "maxprocs"),
                                     info))
    req = SpawnRequest(commands, preput, after_init=True)
    req.check()
    return req


class SpawnResult(Value):
    """What the spawner is told: the children's job, or why there are none.

    ``errcodes`` has one code per process requested (0: started); ``reported``: the
    head has already said why on pmrun's stderr (a refusal).
    """

    __slots__ = ("ok", "job", "kvsname", "error", "errcodes", "reported")  # noqa: RUF023

    def __init__(self, ok: bool, job: int = 0, kvsname: str = "", error: str = "",
                 errcodes: list[int] | None = None, reported: bool = False) -> None:
        self.ok = ok
        self.job = job
        self.kvsname = kvsname
        self.error = error
        self.errcodes = [] if errcodes is None else errcodes
        self.reported = reported


def reply_pmi1(result: SpawnResult) -> bytes:
    """``spawn_result``: rc, then one error code per process (MPICH counts them)."""
    codes = ",".join(map(str, result.errcodes)) if result.errcodes else ""
    if result.ok:
        pairs: list[tuple[str, object]] = [("rc", 0)]
        if codes:
            pairs.append(("errcodes", codes))
        return pmi1.encode("spawn_result", *pairs)
    msg = (result.error or "spawn failed").replace(" ", "_").replace("\n", "_")
    pairs = [("rc", 1)]
    if codes:
        pairs.append(("errcodes", codes))
    pairs.append(("msg", msg))
    return pmi1.encode("spawn_result", *pairs)


def native_reply(result: SpawnResult) -> dict[str, Any]:
    """The native protocol's answer to a spawn (``pm.client``'s ``spawn``)."""
    return {"job": result.job, "kvsname": result.kvsname, "ok": result.ok,
            "error": result.error, "errcodes": result.errcodes}


def reply_pmi2(c: pmi2.Pmi2Command, result: SpawnResult) -> bytes:
    """``spawn-response`` with the children's ``jobid`` (the client requires it)."""
    from pm.proto import pmi2  # (loaded: the request came as a PMI-2 frame)

    if result.ok:
        return pmi2.response(c, [("jobid", result.kvsname)])
    return pmi2.response(c, [("jobid", ""), ("errmsg", result.error or "spawn failed")], rc=1)
