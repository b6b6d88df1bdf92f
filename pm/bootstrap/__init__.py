"""Ways to start node agents on hosts: one module each, behind :class:`pm.bootstrap.base.Bootstrap`.

This package is the registry: which launcher a name means (:func:`get_bootstrap`),
which one a command line asks for (:func:`bootstrap_options`) and the hosts a
launcher brings along (:func:`default_hosts`).  The interface itself
(:mod:`pm.bootstrap.base`) knows no launcher; each launcher module is imported
only when it is used.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from pm.bootstrap.base import Bootstrap

#: Launcher name -> (module, class).  "" and "fork" are the local launcher's other names.
REGISTRY: dict[str, tuple[str, str]] = {
    "": ("pm.bootstrap.local", "LocalBootstrap"),
    "local": ("pm.bootstrap.local", "LocalBootstrap"),
    "fork": ("pm.bootstrap.local", "LocalBootstrap"),
    "exec": ("pm.bootstrap.exec", "ExecBootstrap"),
    "ssh": ("pm.bootstrap.ssh", "SshBootstrap"),
    "slurm": ("pm.bootstrap.slurm", "SlurmBootstrap"),
    "persistent": ("pm.bootstrap.persistent", "PersistentBootstrap"),
}


def get_bootstrap(name: str, options: dict[str, Any]) -> Bootstrap:
    """The bootstrap called ``name``, configured by ``options`` (``JobPlan.bootstrap``)."""
    import importlib

    if name not in REGISTRY:
        raise ValueError(f"unknown bootstrap {name!r}")
    module, cls = REGISTRY[name]
    made: Bootstrap = getattr(importlib.import_module(module), cls)(options)
    return made


def _number(extra: Mapping[str, str], key: str, opt: str, kind: type[float] | type[int],
            minimum: float) -> float | int | None:
    text = extra.get(key)
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{opt} takes a number, not {text!r}") from None
    if value < minimum:
        raise ValueError(f"{opt} must be at least {minimum:g}")
    return value


def is_template(text: str) -> bool:
    """Whether a ``--launcher-exec`` value is pmrun's template (``{host}``/``{command}``)
    rather than Hydra's meaning, the path of the ssh program to use."""
    return "{host}" in text or "{command}" in text


def _in_allocation(hosts: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether every host of ``hosts`` is a node of the Slurm allocation we run in."""
    from pm.common.hostlist import HostlistError, expand

    nodelist = environ.get("SLURM_JOB_NODELIST")
    if not nodelist or not environ.get("SLURM_JOB_ID"):
        return False
    try:
        nodes = set(expand(nodelist))
    except HostlistError:
        return False
    return all(h in nodes for h in hosts)


#: Hydra's -rmk names pmrun reads, and the host file variable of the batch systems.
RESOURCE_MANAGERS = {"slurm": "", "pbs": "PBS_NODEFILE", "lsf": "LSB_DJOB_HOSTFILE"}


def _resource_manager(rmk: str, name: str | None, hosts_given: bool | Sequence[str],
                      environ: Mapping[str, str]) -> tuple[str | None, str | bool]:
    """The launcher and batch host file that Hydra's ``-rmk RMK`` asks for: the hosts are
    that resource manager's allocation (unless hosts are given); ``ValueError`` when this
    is not inside one."""
    if rmk == "slurm":
        if not (environ.get("SLURM_JOB_NODELIST") and environ.get("SLURM_JOB_ID")):
            raise ValueError("-rmk slurm: this is not inside a Slurm allocation "
                             "(no SLURM_JOB_NODELIST)")
        return name or (None if hosts_given else "slurm"), False
    var = RESOURCE_MANAGERS[rmk]
    if not environ.get(var):
        system = "a PBS/Torque" if rmk == "pbs" else "an LSF"
        raise ValueError(f"-rmk {rmk}: this is not inside {system} job (no {var})")
    if name or hosts_given:
        return name, False
    return "ssh", var


def bootstrap_options(extra: Mapping[str, str],
                      hosts_given: bool | Sequence[str] = False) -> dict[str, Any]:
    """The bootstrap dict (``JobPlan.bootstrap``) for the launcher options of the command line.

    ``extra`` holds the raw option values (``launcher``, ``launcher_exec``,
    ``ssh``, ``user``, ``ssh_limit``, ``agents``, ``iface``, ``join_timeout``,
    ``heartbeat``).  Without ``--launcher`` the launcher follows from the other
    options: ``--launcher-exec TEMPLATE`` means exec (``--launcher-exec PROGRAM``
    without ``{host}``/``{command}`` is Hydra's: the ssh program), ``--ssh``
    ssh, ``--agents`` persistent, hosts (``hosts_given``: their names) of which
    one is another machine ssh, as Hydra does, and a Slurm allocation (when no
    hosts are given) slurm.  ``ValueError`` names a bad option.
    """
    import os

    from pm.common.hostlist import batch_hostfile

    name = extra.get("launcher")
    exec_value = extra.get("launcher_exec")
    batch: str | bool = False
    rmk = extra.get("rmk")
    if rmk:  # Hydra's -rmk: whose allocation the hosts come from
        name, batch = _resource_manager(rmk, name, hosts_given, os.environ)
    if not name:
        if exec_value is not None and is_template(exec_value):
            name = "exec"
        elif exec_value is not None or "ssh" in extra:
            name = "ssh"
        elif "agents" in extra:
            name = "persistent"
        elif hosts_given and not isinstance(hosts_given, bool):
            from pm.common.hostlist import is_this_machine

            if all(map(is_this_machine, hosts_given)):
                name = "local"
            else:  # nodes of the allocation we run in: its own launcher (as Hydra's)
                name = "slurm" if _in_allocation(hosts_given, os.environ) else "ssh"
        elif not hosts_given and os.environ.get("SLURM_JOB_NODELIST") and os.environ.get(
                "SLURM_JOB_ID"):
            name = "slurm"
        elif not hosts_given and batch_hostfile(os.environ):
            name = "ssh"  # a PBS/Torque or LSF job: its host file, reached over ssh
            batch = True
        else:
            name = "local"
    known = tuple(n for n in REGISTRY if n)
    if name not in known:
        raise ValueError(f"--launcher takes one of {', '.join(known)}, not {name!r}")
    opts: dict[str, Any] = {"name": name}
    for key, opt, kind, minimum in (("join_timeout", "--join-timeout", float, 0.001),
                                    ("heartbeat", "--heartbeat", float, 0.0),
                                    ("ssh_limit", "--ssh-limit", int, 1)):
        value = _number(extra, key, opt, kind, minimum)
        if value is not None:
            opts["limit" if key == "ssh_limit" else key] = value
    if "iface" in extra:
        opts["iface"] = extra["iface"]
    if "agent_python" in extra and name != "local":
        opts["python"] = extra["agent_python"]  # (other hosts': this one runs ours)
    if name == "exec":
        if not extra.get("launcher_exec"):
            raise ValueError("--launcher exec needs --launcher-exec TEMPLATE")
        opts["template"] = extra["launcher_exec"]
        opts["start"] = "first"
        from pm.bootstrap.exec import expand_template

        expand_template(opts["template"], "h", ["c"])  # one that cannot be split: named now
    elif name == "ssh":
        if "ssh" in extra:
            opts["ssh"] = extra["ssh"]
        elif exec_value:
            opts["ssh"] = exec_value  # Hydra's -launcher-exec: the ssh program
        opts["start"] = "first"
        if "user" in extra:
            opts["user"] = extra["user"]
        # After ssh's own options: Hydra's -enable-x (X11 forwarded; the last -X wins),
        # Intel MPI's -bootstrap-exec-args.
        more = [w for w in ("-X" if extra.get("enable_x") == "1" else "",
                            extra.get("launcher_exec_args") or "") if w]
        if more:
            import shlex

            from pm.bootstrap.ssh import DEFAULT_SSH

            opts["ssh"] = " ".join([opts.get("ssh") or shlex.join(DEFAULT_SSH), *more])
    elif name == "slurm":
        opts["start"] = "step"
        if extra.get("job_name"):
            opts["job_name"] = extra["job_name"]  # (-J: its agents' step's name)
        if extra.get("exact"):
            opts["exact"] = True  # (srun's --exact: the step's own CPUs, pm.head counts them)
        if extra.get("launcher_exec_args"):  # Intel MPI's -bootstrap-exec-args: srun's
            opts["exec_args"] = extra["launcher_exec_args"]
        for key in ("cpu_freq", "slurm_profile", "acctg_freq", "slurmd_debug", "no_kill"):
            if extra.get(key):  # (srun's, for the step: pm.bootstrap.slurm.STEP_OPTIONS)
                opts[key.removeprefix("slurm_")] = extra[key]
    if extra.get("launcher_exec_args"):
        if name not in ("ssh", "slurm"):
            raise ValueError(f"-bootstrap-exec-args: the {name} launcher runs no program to "
                             "give them to (ssh and slurm do)")
        import shlex

        try:
            shlex.split(extra["launcher_exec_args"])
        except ValueError as exc:
            raise ValueError(f"-bootstrap-exec-args {extra['launcher_exec_args']}: "
                             f"{str(exc).lower()}") from None
    if name == "ssh" and opts.get("ssh"):
        from pm.bootstrap.ssh import ssh_argv

        ssh_argv("h", ["c"], opts["ssh"], None)  # a command that cannot be split: named now
    if batch:
        opts["batch"] = batch
    elif name == "persistent":
        if not extra.get("agents"):
            raise ValueError("--launcher persistent needs --agents FILE")
        from pm.bootstrap.persistent import read_agents_file

        # The services' addresses and public keys, and the path of our key pair
        # (the secret key itself is read by the head only, never put in the plan).
        opts.update(read_agents_file(extra["agents"]))
    return opts


def default_hosts(options: Mapping[str, Any]) -> list[tuple[str, int | None]] | None:
    """Hosts a launcher brings along when none are given: the Slurm allocation, a PBS/LSF
    job's host file, or the services of an ``--agents`` file.  ``None`` for the others."""
    name = options.get("name")
    if options.get("batch"):
        import os

        from pm.common.hostlist import batch_hosts

        var = options["batch"] if isinstance(options["batch"], str) else None
        return [(h.host, h.slots) for h in batch_hosts(os.environ, var) or []]
    if name == "slurm":
        from pm.bootstrap.slurm import allocation_hosts

        return allocation_hosts()
    if name == "persistent":
        return [(host, None) for host in options.get("services", {})]
    return None
