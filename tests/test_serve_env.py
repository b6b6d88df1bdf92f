"""The environment ``pm-agent serve`` gives the job agents it starts (``pm.agent.service``).

Pure functions, no service: the fixed set made from the passwd entry and the
configuration, the variables ``pass_env`` names, PYTHONPATH only with the
entries pmrun is imported from, and the configuration keys.  The end-to-end
check (a service's variable reaches neither job agents nor ranks, the user's
reach the ranks) is in ``test_persistent.py``.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

import pm
from pm.agent.service import (
    DEFAULT_PATH,
    KeyFileError,
    agent_env,
    agent_pythonpath,
    credentials,
    load_config,
    write_keypair,
)
from pm.jobenv import AGENT_ONLY, own_env

pytestmark = pytest.mark.timeout(30)

#: Where ``pm`` is imported from here: the PYTHONPATH entry a service run from this tree needs.
PM_ROOT = str(Path(pm.__file__).resolve().parent.parent)

SERVICE_ENV = {
    "SECRET_TOKEN": "service-only", "LD_PRELOAD": "/opt/evil.so", "PATH": "/opt/admin/bin",
    "HOME": "/root", "USER": "root", "LANG": "de_DE.UTF-8", "LC_TIME": "C", "LCX": "no",
    "PYTHONPATH": os.pathsep.join(["/nowhere/site", PM_ROOT, "/nowhere/other"]),
    "PM_SHM_MAX_BYTES": "64M",
}


def test_a_job_agent_gets_the_fixed_set_and_nothing_else_of_the_service() -> None:
    nobody = pwd.getpwnam("nobody")
    env = agent_env(nobody, environ=SERVICE_ENV)
    session = {"PATH": DEFAULT_PATH, "HOME": nobody.pw_dir, "USER": "nobody",
               "LOGNAME": "nobody", "SHELL": nobody.pw_shell or "/bin/sh"}
    assert env == {**session, "PYTHONPATH": PM_ROOT, AGENT_ONLY: '{"PYTHONPATH":null}'}
    # Its ranks start from the session's part: PYTHONPATH is the agent's alone.
    assert own_env(env) == session


def test_the_ranks_of_a_job_agent_get_none_of_what_pass_env_passes_it() -> None:
    nobody = pwd.getpwnam("nobody")
    env = agent_env(nobody, "/usr/bin", ("LANG", "LC_*", "PM_AGENT_ONLY"),
                    {**SERVICE_ENV, AGENT_ONLY: '{"PATH":"/evil"}'})
    assert (env["LANG"], env["LC_TIME"], env["PYTHONPATH"]) == ("de_DE.UTF-8", "C", PM_ROOT)
    assert own_env(env) == {"PATH": "/usr/bin", "HOME": nobody.pw_dir, "USER": "nobody",
                            "LOGNAME": "nobody", "SHELL": nobody.pw_shell or "/bin/sh"}


def test_pass_env_adds_named_variables_but_never_replaces_the_fixed_set() -> None:
    nobody = pwd.getpwnam("nobody")
    env = agent_env(nobody, "/usr/bin:/bin", ("LANG", "LC_*", "PM_SHM_MAX_BYTES"), SERVICE_ENV)
    assert env["PATH"] == "/usr/bin:/bin"
    assert (env["LANG"], env["LC_TIME"], env["PM_SHM_MAX_BYTES"]) == ("de_DE.UTF-8", "C", "64M")
    assert "LCX" not in env and "SECRET_TOKEN" not in env and "LD_PRELOAD" not in env
    # Even "*" (everything) leaves the passwd entry's and the path the service's choice.
    everything = agent_env(nobody, "/usr/bin", ("*",), SERVICE_ENV)
    assert everything["SECRET_TOKEN"] == "service-only"
    assert (everything["PATH"], everything["HOME"], everything["USER"]) == (
        "/usr/bin", nobody.pw_dir, "nobody")
    assert everything["PYTHONPATH"] == PM_ROOT


def test_pythonpath_only_with_the_entries_pmrun_is_imported_from() -> None:
    assert agent_pythonpath({}) is None
    assert agent_pythonpath({"PYTHONPATH": "/nowhere/a:/nowhere/b"}) is None
    assert agent_pythonpath({"PYTHONPATH": f"/nowhere/a:{PM_ROOT}:{PM_ROOT}"}) == PM_ROOT
    # A relative entry is the service's (its cwd): the agent, started elsewhere, gets it whole.
    rel = os.path.relpath(PM_ROOT)
    assert agent_pythonpath({"PYTHONPATH": rel}) == PM_ROOT
    assert "PYTHONPATH" not in agent_env(pwd.getpwnam("nobody"),
                                         environ={"PYTHONPATH": "/nowhere/a"})


def test_credentials_carry_the_job_agents_environment(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    nobody = pwd.getpwnam("nobody")
    as_root = credentials("nobody", allow_root=False, me=0, path="/bin",
                          pass_env=("LANG",), environ=SERVICE_ENV)
    assert as_root["user"] == nobody.pw_uid
    assert as_root["env"] == agent_env(nobody, "/bin", ("LANG",), SERVICE_ENV)
    assert "SECRET_TOKEN" not in as_root["env"] and as_root["env"]["LANG"] == "de_DE.UTF-8"
    same = credentials("nobody", allow_root=False, me=nobody.pw_uid, environ=SERVICE_ENV)
    assert same["env"]["PATH"] == DEFAULT_PATH and "SECRET_TOKEN" not in same["env"]
    # By default the service's real environment is the one left out.
    monkeypatch.setenv("PM_TEST_SERVICE_ONLY", "x")
    assert "PM_TEST_SERVICE_ONLY" not in credentials("nobody", False, me=0)["env"]


def test_service_config_path_and_pass_env(tmp_path: Path) -> None:
    write_keypair(str(tmp_path / "svc"))
    cfg = tmp_path / "agent.toml"
    cfg.write_text('key = "svc.key"\n')
    conf = load_config(str(cfg))
    assert (conf.path, conf.pass_env) == (DEFAULT_PATH, ())
    cfg.write_text('key = "svc.key"\npath = "/opt/bin:/usr/bin"\npass_env = ["LANG", "LC_*"]\n')
    conf = load_config(str(cfg))
    assert (conf.path, conf.pass_env) == ("/opt/bin:/usr/bin", ("LANG", "LC_*"))
    for bad, why in (('path = ""', "path"), ("path = 3", "path"),
                     ('pass_env = "LANG"', "pass_env"), ("pass_env = [1]", "pass_env"),
                     ('pass_env = ["HOME"]', "cannot pass HOME"),
                     ('pass_env = ["PYTHONPATH"]', "cannot pass PYTHONPATH")):
        cfg.write_text(f'key = "svc.key"\n{bad}\n')
        with pytest.raises(KeyFileError, match=why):
            load_config(str(cfg))
