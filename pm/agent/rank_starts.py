"""What each of a node's ranks is started with: program, arguments, environment, place.

:class:`RankStarts` is the part of :class:`~pm.agent.ranks.LocalRanks` that makes a
:class:`~pm.agent.started.RankStart` of each local rank before
:meth:`LocalRanks.start <pm.agent.ranks.LocalRanks.start>` spawns them: its
environment (:func:`pm.agent.spawn.rank_env`; Hydra's ``-pmi-port``, the PMIx server's
variables, srun's ``--gpus-per-task`` and ``--send-libs``), its program (resolved once
an application, or srun's ``--bcast`` copy; under ``--task-prolog``, the shell that
runs the prolog first), its CPUs and its NUMA memory policy (``--mem-bind``,
:mod:`pm.agent.membind`), and srun's ``--pty``.  What a rank cannot have is the
reason it does not start; what a node cannot give (GPUs, limits) is said once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pm.agent.spawn import TASK_PROLOG, SpawnError, rank_env, resolve, spawn_dir
from pm.agent.started import RankStart
from pm.common.output import STDERR

if TYPE_CHECKING:
    from pm.agent.membind import Policy
    from pm.agent.node import JobAgent
    from pm.agent.pmi_port import PmiPort
    from pm.agent.rank_proc import RankProc

log = logging.getLogger("pm.agent")


class RankStarts:
    """How :class:`~pm.agent.ranks.LocalRanks` starts each rank (see the module docstring);
    its state is made by :class:`~pm.agent.ranks.LocalRanks`."""

    agent: JobAgent
    ranks: dict[int, RankProc]
    _epilog_env: dict[int, dict[str, str]]
    _gpu_said: bool

    if TYPE_CHECKING:  # LocalRanks's (see the module docstring)
        def _pmi_port(self) -> PmiPort: ...

    def _rank_starts(self, base_env: dict[str, str], cpusets: list[frozenset[int]] | None
                     ) -> list[RankStart]:
        """What to start for each local rank, in rank order, with the job's environment
        ``base_env`` and the ranks' ``cpusets``."""
        agent, plan = self.agent, self.agent.plan
        resolved: dict[int, str | SpawnError] = {}
        todo = []
        mems = self._mem_policies(cpusets) if plan.mem_bind else {}
        for rank, proc in self.ranks.items():
            appnum = plan.app_of_rank(rank)
            app = plan.apps[appnum]
            argv, app_env, wdir = app.argv, app.env, app.wdir or agent.launch_dir
            env = rank_env(base_env, app_env, rank, plan.size, agent.host, proc.local_rank,
                           len(self.ranks))
            if plan.pmi_port:  # Hydra's -pmi-port: PMI_PORT and PMI_ID, not PMI_FD
                del env["PMI_FD"]
                env.update(self._pmi_port().env(rank))
            if agent.pmix is not None:
                agent.pmix.add_env(env, rank)
            if plan.gpus_per_task:  # srun's --gpus-per-task
                self._deal_gpus(env, proc.local_rank)
            copy = agent.bcast_paths.get(appnum)  # srun's --bcast: the node's copy
            libs = agent.bcast_libs.get(appnum)  # and --send-libs' folder of its libraries
            if libs is not None:
                env["LD_LIBRARY_PATH"] = ":".join(
                    p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
            if copy is not None:
                resolved[appnum] = copy
                if isinstance(copy, str):
                    argv = [copy, *argv[1:]]
            elif appnum not in resolved:
                try:
                    # (-wdir missing on this node: said so, not that ./prog is missing in it.)
                    spawn_dir(app.wdir, argv[0])
                    resolved[appnum] = resolve(argv[0], env, wdir)
                except SpawnError as exc:
                    resolved[appnum] = exc
            path = resolved[appnum]
            cpus = cpusets[proc.local_rank] if cpusets else None
            if plan.task_epilog:
                self._epilog_env[rank] = env
            if plan.task_prolog and isinstance(path, str):  # srun's --task-prolog
                path, argv = "/bin/sh", ["/bin/sh", "-c", TASK_PROLOG, "pm-task-prolog",
                                         plan.task_prolog, *argv]
            mem = mems.get(proc.local_rank)
            pty = None
            if plan.pty and rank == plan.stdin_rank and not plan.spawned:  # srun's --pty
                pty = (plan.pty[0], plan.pty[1])
            todo.append(RankStart(rank, proc.local_rank, path if isinstance(path, str) else "",
                                  argv, env, wdir, cpus, failure=_why(path) or _why(mem),
                                  mem=None if isinstance(mem, SpawnError) else mem, pty=pty))
        return todo

    def _mem_policies(self, cpusets: list[frozenset[int]] | None
                      ) -> dict[int, Policy | SpawnError | None]:
        """Each local rank's NUMA memory policy under --mem-bind (:mod:`pm.agent.membind`), or
        why it cannot have it; with --report-bindings, a line for each rank."""
        from pm.agent.membind import MemBindError, describe, numa_nodes, rank_policy
        from pm.proto import tree_wire as t

        agent = self.agent
        nodes = numa_nodes()
        out: dict[int, Policy | SpawnError | None] = {}
        lines = []
        for rank, proc in self.ranks.items():
            lr = proc.local_rank
            cpus = cpusets[lr] if cpusets and lr < len(cpusets) else None
            try:
                pol = out[lr] = rank_policy(agent.plan.mem_bind, lr, cpus, nodes, agent.host)
            except MemBindError as exc:
                out[lr] = SpawnError(f"--mem-bind: {exc}")
                continue
            if agent.plan.report_bindings:
                line = f"rank {rank} on {agent.host}: {describe(pol)}\n"
                lines.append(t.RankOutput(rank, STDERR, line.encode()))
        if lines:
            agent.parent.send(t.Output(lines))
        return out

    def _deal_gpus(self, env: dict[str, str], local_rank: int) -> None:
        """Give the rank with ``env`` its GPUs (:mod:`pm.agent.gpus`); a node with none, or
        with too few for its ranks, says so once."""
        from pm.agent.gpus import deal, node_gpus, shortage

        per = self.agent.plan.gpus_per_task
        found = node_gpus(env)
        if found is None:
            self._gpu_notice("no GPU here (none named by CUDA_VISIBLE_DEVICES or "
                             "ROCR_VISIBLE_DEVICES, none in /proc/driver/nvidia or "
                             "/sys/class/kfd): --gpus-per-task gives its ranks none")
            return
        var, gpus = found
        env[var] = ",".join(deal(gpus, per, local_rank))
        why = shortage(len(gpus), per, len(self.ranks))
        if why is not None:
            self._gpu_notice(why)

    def _gpu_notice(self, text: str) -> None:
        if not self._gpu_said:
            self._gpu_said = True
            self._limit_warning(text)

    def _limit_warning(self, text: str) -> None:
        log.warning("node %d (%s): %s", self.agent.vertex, self.agent.host, text)


def _why(what: object) -> str:
    return str(what) if isinstance(what, SpawnError) else ""
