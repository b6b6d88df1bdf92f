"""pm.common.hostlist: Slurm host lists, Hydra -hosts and host files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from launch_util import loaded_bare

from pm.common.hostlist import (
    MAX_HOSTS,
    HostlistError,
    HostSlots,
    compress,
    expand,
    merged,
    parse_hostfile,
    parse_hosts_option,
)
from pm.proto.errors import PMError

pytestmark = pytest.mark.timeout(60)


# --- expand ------------------------------------------------------------------


def test_expand_example_from_the_contract() -> None:
    assert expand("node[01-04,07],login1,rack[1-2]-n[1-2]") == [
        "node01",
        "node02",
        "node03",
        "node04",
        "node07",
        "login1",
        "rack1-n1",
        "rack1-n2",
        "rack2-n1",
        "rack2-n2",
    ]


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("a", ["a"]),
        ("a,b", ["a", "b"]),
        (" a , b ", ["a", "b"]),
        ("", []),
        ("  ", []),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[007]", ["n007"]),
        ("n[3,1,2]", ["n3", "n1", "n2"]),
        ("n[1-2]x", ["n1x", "n2x"]),
        ("[1-2]", ["1", "2"]),
        ("n[1-2],n[1-2]", ["n1", "n2", "n1", "n2"]),
        ("n[5-5]", ["n5"]),
        ("a[1-2]b[3-4]c", ["a1b3c", "a1b4c", "a2b3c", "a2b4c"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
        ("host-a.example.org", ["host-a.example.org"]),
    ],
)
def test_expand(spec: str, hosts: list[str]) -> None:
    assert expand(spec) == hosts


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("n[1-2", "n[1-2"),
        ("n1-2]", "n1-2]"),
        ("n[[1-2]]", "n[[1-2]]"),
        ("n[5-3]", "5-3"),
        ("n[a-b]", "a-b"),
        ("n[1-]", "1-"),
        ("n[-1]", "-1"),
        ("n[]", "n[]"),
        ("n[1,,2]", "n[1,,2]"),
        ("a,,b", "empty host name in host list 'a,,b'"),
        ("a,", "'a,'"),
        (",a", "',a'"),
        ("a b", "a b"),
        ("n[1, 3]", "n[1, 3]"),
    ],
)
def test_expand_errors_name_the_bad_text(spec: str, names: str) -> None:
    with pytest.raises(HostlistError) as info:
        expand(spec)
    assert names in str(info.value)
    assert isinstance(info.value, PMError)
    assert isinstance(info.value, ValueError)


def test_expand_refuses_huge_lists() -> None:
    with pytest.raises(HostlistError, match="too"):
        expand("n[0-999999999]")
    with pytest.raises(HostlistError, match="too"):
        expand("a[0-9999]b[0-9999]")
    assert len(expand(f"n[1-{MAX_HOSTS}]")) == MAX_HOSTS


# --- compress ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "spec"),
    [
        ([], ""),
        (["login1"], "login1"),
        (["a", "b"], "a,b"),
        (["n1", "n2", "n3"], "n[1-3]"),
        (["node01", "node02", "node03", "node04", "node07"], "node[01-04,07]"),
        (["n08", "n09", "n10"], "n[08-10]"),
        (["n9", "n10"], "n[9-10]"),
        (["n1", "n02"], "n[1,02]"),
        (["n3", "n1", "n2"], "n[3,1-2]"),
        (["n1", "n1"], "n[1,1]"),
        (["rack1-n1", "rack1-n2", "rack2-n1"], "rack1-n[1-2],rack2-n1"),
        (["a1b", "a2b", "a3c"], "a[1-2]b,a3c"),
        (["n1", "login", "n2"], "n1,login,n2"),
    ],
)
def test_compress(hosts: list[str], spec: str) -> None:
    assert compress(hosts) == spec
    assert expand(spec) == hosts


@pytest.mark.parametrize("bad", ["", "a b", "a,b", "n[1]", "x]"])
def test_compress_rejects_names_a_host_list_cannot_hold(bad: str) -> None:
    with pytest.raises(HostlistError):
        compress(["ok", bad])


_name_part = st.text(alphabet="abcz-._", min_size=0, max_size=3)
_number = st.one_of(
    st.integers(0, 120).map(str),
    st.integers(0, 120).map(lambda x: str(x).zfill(3)),
)


@st.composite
def host_names(draw: st.DrawFn) -> str:
    name = draw(_name_part) + draw(st.one_of(st.just(""), _number)) + draw(_name_part)
    return name or "h"


@st.composite
def host_lists(draw: st.DrawFn) -> list[str]:
    # Runs of consecutive numbers, so that ranges actually form.
    hosts: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        prefix = draw(_name_part)
        suffix = draw(st.sampled_from(["", "-ib", ".x"]))
        start = draw(st.integers(0, 120))
        width = draw(st.sampled_from([1, 2, 3]))
        count = draw(st.integers(1, 15))
        hosts.extend(f"{prefix}{str(v).zfill(width)}{suffix}" for v in range(start, start + count))
        hosts.extend(draw(st.lists(host_names(), max_size=2)))
    return hosts


@given(host_lists())
@settings(max_examples=300, deadline=None)
def test_compress_round_trips(hosts: list[str]) -> None:
    spec = compress(hosts)
    assert expand(spec) == hosts


def test_compress_makes_long_runs_short() -> None:
    hosts = [f"node{i:04d}" for i in range(1, 1001)]
    assert compress(hosts) == "node[0001-1000]"


# --- -hosts ------------------------------------------------------------------


def test_hosts_option_example_from_the_contract() -> None:
    assert parse_hosts_option("h1,h2:4,node[1-3]:2") == [
        HostSlots("h1", None),
        HostSlots("h2", 4),
        HostSlots("node1", 2),
        HostSlots("node2", 2),
        HostSlots("node3", 2),
    ]


def test_hosts_option_details() -> None:
    assert parse_hosts_option("") == []
    assert parse_hosts_option(" a : 3 , b ") == [HostSlots("a", 3), HostSlots("b", None)]
    assert parse_hosts_option("n[1,3]") == [HostSlots("n1", None), HostSlots("n3", None)]
    # Repeats merge into the first place, each count-less mention counting 1.
    assert parse_hosts_option("a,b,a") == [HostSlots("a", 2), HostSlots("b", None)]
    assert parse_hosts_option("a:2,b,a:3") == [HostSlots("a", 5), HostSlots("b", None)]


def test_host_lists_as_given_keep_every_entry() -> None:
    # Hydra deals ranks to the entries as given: a host named again is another entry.
    assert parse_hosts_option("a,b:3,a,n[1-2]", merge=False) == [
        HostSlots("a", None), HostSlots("b", 3), HostSlots("a", None),
        HostSlots("n1", None), HostSlots("n2", None)]
    assert parse_hostfile("a:2\nb slots=3\na\n", merge=False) == [
        HostSlots("a", 2), HostSlots("b", 3), HostSlots("a", None)]
    assert merged(parse_hosts_option("a,b:3,a", merge=False)) == \
        parse_hosts_option("a,b:3,a") == [HostSlots("a", 2), HostSlots("b", 3)]
    with pytest.raises(HostlistError, match="not a host name"):
        parse_hosts_option("a\0b", merge=False)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("a:0", "a:0"),
        ("a:-1", "a:-1"),
        ("a:x", "a:x"),
        ("a:", "a:"),
        (":3", "empty host name in -hosts ':3'"),
        ("a,,b", "'a,,b'"),
        ("n[1-2:3", "n[1-2:3"),
        ("n[3-1]:2", "3-1"),
    ],
)
def test_hosts_option_errors(spec: str, names: str) -> None:
    with pytest.raises(HostlistError) as info:
        parse_hosts_option(spec)
    assert names in str(info.value)


# --- host files --------------------------------------------------------------


def test_hostfile_formats() -> None:
    text = """
# a comment
h1
h2:4   # trailing comment
h3 slots=2
h4 slots=3 max_slots=8

   h5:1
n[1-2]:2
"""
    assert parse_hostfile(text) == [
        HostSlots("h1", None),
        HostSlots("h2", 4),
        HostSlots("h3", 2),
        HostSlots("h4", 3),
        HostSlots("h5", 1),
        HostSlots("n1", 2),
        HostSlots("n2", 2),
    ]


def test_hostfile_repeats_add_up_in_first_seen_order() -> None:
    text = "b\na:2\nb\nc slots=1\na slots=3\nb:4\n"
    assert parse_hostfile(text) == [
        HostSlots("b", 6),
        HostSlots("a", 5),
        HostSlots("c", 1),
    ]


def test_hostfile_empty() -> None:
    assert parse_hostfile("") == []
    assert parse_hostfile("# nothing\n\n   \n") == []


def test_hostfile_windows_line_ends() -> None:
    assert parse_hostfile("a:2\r\nb\r\n") == [HostSlots("a", 2), HostSlots("b", None)]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("ok\nh:0\n", "line 2: h:0"),
        ("h slots=0", "line 1"),
        ("h slots=x", "slots=x"),
        ("h:2 slots=3", "twice"),
        ("h cpus=3", "cpus=3"),
        ("h junk", "junk"),
        ("n[1-2", "n[1-2"),
        ("n[4-2]:1", "4-2"),
    ],
)
def test_hostfile_errors_name_the_line(text: str, names: str) -> None:
    with pytest.raises(HostlistError) as info:
        parse_hostfile(text)
    assert names in str(info.value)


def test_reading_a_host_list_imports_no_re_nor_typing() -> None:
    # pmrun's quick path reads Hydra's -hosts localhost:4 with this module (re: 5 ms).
    code = ("import pm.quick, pm.common.hostlist as h\n"
            "h.parse_hosts_option('localhost:4,n[01-03]'); h.compress(['n1', 'n2'])")
    assert loaded_bare(code, {"re", "typing", "asyncio", "logging"}) == []
