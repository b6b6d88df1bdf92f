"""Task ensembles: the tasks file and the scheduler (pure), then a real capped run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pm.agent.memory import NodeMemory, Watermarks, tree_rss
from pm.ensemble.inputs import chunked, combinations, fill, in_context, split_columns, spread
from pm.ensemble.joblog import JobLog, read_joblog
from pm.ensemble.scheduler import EnsembleScheduler, Progress, Start, TaskStatus
from pm.ensemble.task import TaskResult
from pm.ensemble.taskspec import (
    TaskFileError,
    TaskSpec,
    command_key,
    parse_tasks,
    with_arguments,
)
from pm.proto.errors import UsageError

sys.path.insert(0, str(Path(__file__).parent))
from cgroup_util import memory_cgroup

MiB = 1 << 20

# ------------------------------------------------------------------------- tasks file


def test_parse_tasks() -> None:
    text = """
# a comment line
    ./sim --n 1
[mem=2G] ./sim --n 2   # big one
[mem=512M, ] python3 fit.py 'a b' "c#d" e#f
\t
[ -f x ]
echo \\# not-a-comment
[mem=0] true
"""
    tasks = parse_tasks(text, default_mem=100)
    # Each line runs through sh -c as written (after its options block) ...
    assert [t.argv for t in tasks] == [
        ("sh", "-c", "./sim --n 1"),
        ("sh", "-c", "./sim --n 2   # big one"),
        ("sh", "-c", """python3 fit.py 'a b' "c#d" e#f"""),
        ("sh", "-c", "[ -f x ]"),
        ("sh", "-c", "echo \\# not-a-comment"),
        ("sh", "-c", "true"),
    ]
    # ... and its words (split as a shell does) say which command it is.
    assert [t.words for t in tasks] == [
        ("./sim", "--n", "1"),
        ("./sim", "--n", "2"),
        ("python3", "fit.py", "a b", "c#d", "e#f"),
        ("[", "-f", "x", "]"),
        ("echo", "#", "not-a-comment"),
        ("true",),
    ]
    assert [t.mem for t in tasks] == [100, 2 << 30, 512 * MiB, 100, 100, 0]
    assert [t.index for t in tasks] == list(range(6))
    assert [t.lineno for t in tasks] == [3, 4, 5, 7, 8, 9]
    assert tasks[1].line == "[mem=2G] ./sim --n 2   # big one"
    assert parse_tasks("a\nb")[0].mem is None  # no default: unknown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok\n[cpu=2] x", "line 2: unknown option 'cpu'"),
        ("[mem=lots] x", "line 1: cannot read 'lots'"),
        ("[mem=50%] x", "line 1: .*percentage"),
        ("[mem=1G]", "line 1: options but no command"),
        ("[mem] x", "line 1: expected key=value, not 'mem'"),
        ("[mem=1G x", "line 1: options block without its"),
        ("[mem=1G] # only a comment", "line 1: options but no command"),
        ("echo 'unclosed", "line 1: No closing quotation"),
    ],
)
def test_parse_tasks_errors(text: str, message: str) -> None:
    with pytest.raises(TaskFileError, match=message) as info:
        parse_tasks(text)
    assert isinstance(info.value, ValueError)


def test_arguments_after_three_colons() -> None:
    specs = parse_tasks("[mem=1M] sim -i {} -o out.{}\necho hi\n")
    tasks = with_arguments(specs, [("1",), ("a b",)])
    assert [t.argv[2] for t in tasks] == [
        "sim -i 1 -o out.1", "sim -i 'a b' -o out.'a b'", "echo hi 1", "echo hi 'a b'"]
    assert [t.index for t in tasks] == [0, 1, 2, 3]
    assert [t.lineno for t in tasks] == [1, 1, 2, 2]
    assert tasks[1].line == "[mem=1M] sim -i 'a b' -o out.'a b'" and tasks[1].mem == 1 << 20
    assert tasks[1].words == ("sim", "-i", "a b", "-o", "out.a b")
    assert tasks[0].key == tasks[1].key == ("sim",)


def test_sources_combine_last_fastest_and_plus_pairs() -> None:
    files = {"f": "l1\nl 2\n", "g": "x\n"}
    assert combinations([":::", "a", "b", ":::", "1", "2"], files.__getitem__) == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    assert combinations([":::", "a", "b", "c", ":::+", "1", "2"], files.__getitem__) == [
        ("a", "1"), ("b", "2")]
    assert combinations(["::::", "f", ":::", "z"], files.__getitem__) == [
        ("l1", "z"), ("l 2", "z")]
    assert combinations(["::::", "f", "g"], files.__getitem__) == [("l1", "x"), ("l 2", "x")]
    assert combinations(["::::", "f", "::::+", "g"], files.__getitem__) == [("l1", "x")]


@pytest.mark.parametrize(("words", "message"), [
    ([":::+", "a"], ":::\\+ pairs its source with the one before it: there is none"),
    (["::::", "missing"], ":::: missing: No such file"),
])
def test_bad_sources_are_named(words: list[str], message: str) -> None:
    def read(path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(UsageError, match=message):
        combinations(words, read)


@pytest.mark.parametrize(("line", "args", "filled"), [
    ("echo {} {.} {/} {//} {/.}", ("dir/x.tar.gz",),
     "echo dir/x.tar.gz dir/x.tar x.tar.gz dir x.tar"),
    ("echo {//} {.}", ("x",), "echo . x"),
    ("echo {.}", ("y.d/z",), "echo y.d/z"),
    ("cp {1} {2/}.{#}", ("a b", "c/d"), "cp 'a b' d.7"),
    ("echo {}", ("a b", "it's"), "echo 'a b' 'it'\"'\"'s'"),
    ("echo", ("a b", "c"), "echo 'a b' c"),
    ("echo {#}", ("a",), "echo 7"),
    ("CUDA_VISIBLE_DEVICES={%} sim", ("a",), "CUDA_VISIBLE_DEVICES=$PARALLEL_JOBSLOT sim"),
    ("awk '{print $1}' ${HOME} {1..3}", ("f",), "awk '{print $1}' ${HOME} {1..3} f"),
])
def test_replacement_strings(line: str, args: tuple[str, ...], filled: str) -> None:
    assert fill(line, args, 7) == filled


def test_many_args_spread_over_the_slots_and_cut_at_the_line_length() -> None:
    combos = [(str(i),) for i in range(1, 8)]
    assert spread(combos, 3, "-m") == [("1", "2", "3"), ("4", "5", "6"), ("7",)]
    assert spread(combos, 0, "--xargs") == [tuple(str(i) for i in range(1, 8))]
    # A group longer than a command line holds is cut where it would overflow.
    assert spread([("aaaa",)] * 5, 1, "-m", budget=10) == [("aaaa", "aaaa"), ("aaaa", "aaaa"),
                                                          ("aaaa",)]
    assert in_context("cp {} x{}y {#} /d", ("a b", "c"), 4) == "cp 'a b' c x'a b'y xcy 4 /d"
    with pytest.raises(UsageError, match="-X takes the arguments of one input source, not of 2"):
        spread([("a", "1")], 2, "-X")


def test_max_args_groups_one_source_s_arguments() -> None:
    combos = [("a",), ("b c",), ("d",)]
    assert chunked(combos, 2) == [("a", "b c"), ("d",)]
    assert chunked(combos, 0) == [(), (), ()]
    # {k} beyond the last, shorter group is empty; without replacement strings the
    # arguments are appended, and with -N 0 none is (after a space all the same, as GNU
    # parallel writes the line).
    assert [fill("x {1}-{2} {}", c, 1, width=2) for c in chunked(combos, 2)] == [
        "x a-'b c' a 'b c'", "x d- d"]
    assert [fill("echo", c, 1, width=2) for c in chunked(combos, 2)] == [
        "echo a 'b c'", "echo d"]
    assert fill("echo hi", (), 1) == "echo hi "
    with pytest.raises(UsageError, match="names argument 3: -N 2 gives 2"):
        fill("{3}", ("a",), 1, width=2)
    with pytest.raises(UsageError, match="one input source, not of 2"):
        chunked([("a", "1")], 2)


def test_colsep_splits_each_argument_into_columns() -> None:
    combos = split_columns([("a,1", "x"), ("b c,2", "y")], r"\s*,\s*")
    assert combos == [("a", "1", "x"), ("b c", "2", "y")]
    assert [fill("sim {2} {1} {3}", c, 1) for c in combos] == ["sim 1 a x", "sim 2 'b c' y"]


def test_an_argument_that_unbalances_the_lines_quotes_is_left_to_the_shell() -> None:
    (task,) = with_arguments(parse_tasks('echo "{}"\n'), [('a"b',)])
    assert task.argv == ("sh", "-c", 'echo "\'a"b\'"') and task.words == ("echo", "{}")


_PIECES = ["a", " ", "{}", "{1}", "{2.}", "{-1}", "{-2/}", "{/}", "{#}", "{%}", "#", ".", "/",
           "\\", "'", '"', ";", "$", "[mem=1M] ", "[", "]", "=", "\t", "x y"]
_LINE = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=12).map("".join)
_ARG = st.text(st.sampled_from(list("ab \"'{}\\$#;\n.")), max_size=8)


@given(st.lists(_LINE, min_size=1, max_size=3),
       st.lists(st.lists(_ARG, min_size=1, max_size=3), min_size=1, max_size=3))
@settings(max_examples=500, deadline=None)
def test_any_lines_and_arguments_give_tasks_or_a_named_error(lines: list[str],
                                                             args: list[list[str]]) -> None:
    try:
        specs = parse_tasks("\n".join(lines))
    except TaskFileError:
        return  # the file's own fault, named
    width = min(map(len, args))
    try:
        tasks = with_arguments(specs, [tuple(a[:width]) for a in args])
    except TaskFileError as exc:
        assert "names input source" in str(exc)
        return
    assert len(tasks) == len(specs) * len(args)
    assert all(t.argv[:2] == ("sh", "-c") for t in tasks)


def test_a_source_beyond_the_given_ones_is_empty_as_gnu_parallels() -> None:
    assert fill("echo {3} {2}", ("a", "b"), 1) == "echo  b"
    assert fill("echo {-1} {-2.}", ("a.x", "b.y"), 1) == "echo b.y a"
    specs = parse_tasks("echo\necho x{2.}y\n")
    assert [t.argv[-1] for t in with_arguments(specs, [("a",)])] == ["echo a", "echo xy"]
    # Sources without arguments: none (no task), or beside others one empty argument.
    assert combinations([":::"], str) == combinations(["::::"], str) == []
    assert combinations([":::", "a", ":::"], str) == [("a", "")]


def test_command_key() -> None:
    assert command_key(["./sim", "--n", "1"]) == ("./sim",)
    assert command_key(["python3", "-u", "fit.py", "1"]) == ("python3", "fit.py")
    assert command_key(["/usr/bin/bash", "run.sh"]) == ("/usr/bin/bash", "run.sh")
    assert command_key(["python"]) == ("python",)


# -------------------------------------------------------------------------- scheduler

W = Watermarks(1000, 800)


def specs(*mems: int | None, argv: tuple[str, ...] = ("work",)) -> list[TaskSpec]:
    return [TaskSpec(i, argv, m, " ".join(argv)) for i, m in enumerate(mems)]


def started(starts: list[Start]) -> list[tuple[int, str]]:
    return [(s.task.index, str(s.node)) for s in starts]


def test_small_tasks_many_at_once_big_ones_few() -> None:
    s = EnsembleScheduler(["n0"])
    assert s.add(specs(*[100] * 12)) == []  # no node has reported yet
    assert s.progress() == Progress(0, 0, 12, "the nodes' memory figures")
    starts = s.node_memory("n0", 0, W)
    assert len(starts) == 10 and all(x.reservation == 100 and x.declared for x in starts)
    assert s.progress() == Progress(0, 10, 2, "memory")

    big = EnsembleScheduler(["n0"])
    big.node_memory("n0", 0, W)
    assert started(big.add(specs(400, 400, 400, 400))) == [(0, "n0"), (1, "n0")]
    assert started(big.task_exited(0, 0)) == [(2, "n0")]


def test_node_with_most_headroom_first() -> None:
    s = EnsembleScheduler(["a", "b"])
    s.node_memory("a", 500, W)
    s.node_memory("b", 100, W)
    starts = s.add(specs(300, 300, 300, 300))
    # Headroom b 900, a 500 -> b; b 600 -> b; a 500 vs b 300 -> a; a 200 vs b 300 -> b.
    assert started(starts) == [(0, "b"), (1, "b"), (2, "a"), (3, "b")]
    assert started(s.add([TaskSpec(4, ("work",), 300, "")])) == []
    assert s.progress() == Progress(0, 4, 1, "memory")


def test_fifo_and_backfill() -> None:
    strict = EnsembleScheduler(["n"])
    strict.node_memory("n", 0, W)
    assert started(strict.add(specs(600, 600, 100))) == [(0, "n")]  # 100 waits behind 600
    back = EnsembleScheduler(["n"], backfill=True)
    back.node_memory("n", 0, W)
    assert started(back.add(specs(600, 600, 100))) == [(0, "n"), (2, "n")]


def test_slots_limit_per_node() -> None:
    s = EnsembleScheduler(["a", "b"], slots={"a": 1, "b": 2})
    s.node_memory("a", 0, W)
    s.node_memory("b", 0, W)
    assert len(s.add(specs(*[10] * 5))) == 3
    assert s.progress() == Progress(0, 3, 2, "a free slot")  # not memory
    assert s.progress().format(5) == "tasks: 0/5 done, 3 running, 2 queued, waiting for a free slot"


def test_progress_says_what_the_first_queued_task_waits_for() -> None:
    s = EnsembleScheduler(["a"], slots=2, slot_word="a core", default_reservation=300)
    s.add(specs(None, None, 500, 600))
    assert s.progress().waiting == "the nodes' memory figures"
    assert started(s.node_memory("a", 0, W)) == [(0, "a")]
    # One guessed task at a time until a sample measured it.
    assert s.progress() == Progress(0, 1, 3, "a running task's first measurement")
    # Measured, and its peak held for a sample: the next guess may start.
    assert started(s.node_memory("a", 50, tasks={0: 50}, now=1)) == []
    assert started(s.node_memory("a", 50, tasks={0: 50}, now=2)) == [(1, "a")]
    assert s.progress() == Progress(0, 2, 2, "a core")
    s.task_exited(0, 0)
    s.task_exited(1, 0)
    # Task 2 (500) started; task 3 (600) does not fit beside it under the high watermark.
    assert s.progress() == Progress(2, 1, 1, "memory")
    assert s.progress().format(4) == "tasks: 2/4 done, 1 running, 1 queued, waiting for memory"
    s.task_exited(2, 0)
    s.task_exited(3, 0)
    assert s.progress().format(4) == "tasks: 4/4 done, 0 running, 0 queued"


def test_learning_uses_the_lines_command_not_sh() -> None:
    a, b = parse_tasks("python3 fit.py 1 | tee x\npython3 fit.py 2")
    assert a.argv[:2] == ("sh", "-c") and a.key == b.key == ("python3", "fit.py")


def test_hysteresis_on_a_node() -> None:
    s = EnsembleScheduler(["n"])
    s.node_memory("n", 0, W)
    s.add(specs(100, 100, 100))
    assert s.node_memory("n", 1001, W) == []  # the node passed high on its own
    s.task_exited(0, 0)
    s.task_exited(1, 0)
    assert s.node_memory("n", 850, W) == []  # 850 + 100 reserved: above low
    s.add([TaskSpec(3, ("work",), 100, "work")])
    assert s.progress().waiting == "memory"
    assert started(s.node_memory("n", 600, W)) == [(3, "n")]  # 600 + 100 <= low


def test_usage_beyond_reservation_holds_back_others() -> None:
    s = EnsembleScheduler(["n"])
    s.node_memory("n", 0, W)
    s.add(specs(300, 300, 400))
    assert s.progress().running == 3
    s.task_exited(1, 0)
    # Task 0 uses more than its bound; the node's usage shows it at the same time.
    assert s.node_memory("n", 500, tasks={0: 500, 2: 0}) == []
    adm = s.admission("n")
    assert adm is not None and adm.reservation(0) == 500
    assert [o.ident for o in adm.overruns()] == [0]
    assert s.add([TaskSpec(3, ("work",), 200, "work")]) == []  # 500 + 0 + 400 + 200 > 1000
    assert s.node_memory("n", 600, tasks={0: 600}) == []
    assert started(s.task_exited(2, 0)) == [(3, "n")]  # 600 + 200 <= 1000


def test_samples_apart_are_applied_too() -> None:
    s = EnsembleScheduler(["n"])
    s.node_memory("n", 0, W)
    s.add(specs(700, 600))
    assert started(s.task_usage(0, 200)) == []  # 0 used + 500 unused + 600 > 1000
    assert s.record(0).peak == 200
    assert started(s.task_usage(0, 400)) == [(1, "n")]  # stale node usage: counts 400 less
    assert s.task_usage(0, 10) == [] and s.record(0).peak == 400


def test_retries() -> None:
    s = EnsembleScheduler(["n"], retries=2)
    s.node_memory("n", 0, W)
    s.add(specs(100, 100))
    assert [x.attempt for x in s.task_exited(0, 1)] == [2]
    assert [x.attempt for x in s.task_exited(0, -9)] == [3]
    s.task_exited(1, 0)
    assert s.task_exited(0, 3) == [] and s.finished
    summary = s.summary()
    assert (summary.total, summary.succeeded, summary.failed, summary.retries) == (2, 1, 1, 2)
    assert summary.exit_codes == {0: (1, -9, 3), 1: (0,)}
    assert "task 0 (line 0): exit codes 1, -9, 3" in summary.format()
    assert s.progress() == Progress(2, 0, 0, "")


def test_nothing_starts_or_is_retried_once_stopped() -> None:
    s = EnsembleScheduler(["n"], retries=2, slots=1)
    s.node_memory("n", 0, W)
    assert started(s.add(specs(100, 100))) == [(0, "n")]
    s.stop("not run: SIGINT")
    assert s.take_failed_unrun() == [1] and s.record(1).reason == "not run: SIGINT"
    assert s.task_exited(0, 130) == [] and s.finished  # the interrupted run: no retry
    assert s.record(0).status is TaskStatus.FAILED and s.record(0).exit_codes == [130]


def test_a_start_whose_run_never_began_is_withdrawn() -> None:
    s = EnsembleScheduler(["n"], slots=1)
    s.node_memory("n", 0, W)
    (first,) = s.add(specs(100, 100))
    s.stop("not run: --halt now,fail=1")
    s.withdraw(first.task.index)
    assert s.record(0).status is TaskStatus.FAILED and s.record(0).attempts == 0
    assert s.record(0).reason == "not run: --halt now,fail=1"
    assert sorted(s.take_failed_unrun()) == [0, 1] and s.finished
    assert s.schedule() == []


def test_retry_reserves_at_least_the_last_peak() -> None:
    s = EnsembleScheduler(["n"], retries=1, margin=1.25)
    s.node_memory("n", 0, W)
    s.add(specs(100))
    s.task_usage(0, 400)
    (rerun,) = s.task_exited(0, -9)
    assert rerun.reservation == 500 and rerun.declared


def test_tasks_of_a_command_start_together_once_two_showed_alike_sizes() -> None:
    s = EnsembleScheduler(["n"], default_reservation=200, margin=1.25, small=0)
    s.node_memory("n", 0, W)
    sim = s.add([TaskSpec(i, ("./sim",), None, "./sim") for i in range(6)])
    assert [(x.reservation, x.declared) for x in sim] == [(200, False)]  # one guess in flight
    assert s.progress().waiting == "a running task's first measurement"
    assert started(s.node_memory("n", 80, tasks={0: 80}, now=1)) == []  # still growing?
    # Measured, and its peak held for a sample: one size is no rule yet, the next starts
    # alone (its guess raised to no less than 80 x 1.25).
    assert started(s.node_memory("n", 80, tasks={0: 80}, now=2)) == [(1, "n")]
    assert started(s.node_memory("n", 164, tasks={0: 80, 1: 84}, now=3)) == []
    # Two alike (84 <= 80 x 1.25): the others start together, as many as fit:
    # 164 used + 120 + 116 unused + 3 x 200 (a fourth would pass 1000).
    assert started(s.node_memory("n", 164, tasks={0: 80, 1: 84}, now=4)
                   ) == [(2, "n"), (3, "n"), (4, "n")]
    # A finished task's peak is what the command's tasks reserve now: 84 x 1.25.
    assert started(s.task_exited(1, 0)) == [(5, "n")]
    assert s.record(5).reservation == 105


def test_a_command_whose_sizes_vary_keeps_one_guess_at_a_time() -> None:
    # The next task of such a command may be larger again: each waits for the one before.
    s = EnsembleScheduler(["n"], default_reservation=100, margin=1.25, small=0)
    s.node_memory("n", 0, W)
    assert started(s.add(specs(None, None, None, None))) == [(0, "n")]
    assert started(s.task_exited(0, 0, rss=40)) == [(1, "n")]
    assert started(s.task_exited(1, 0, rss=80)) == [(2, "n")]  # 80 > 40 x 1.25
    assert started(s.task_exited(2, 0, rss=80)) == [(3, "n")]


def test_a_task_no_sample_measured_learns_from_its_exit() -> None:
    # Tasks that end between two samples: their command learns the largest resident size
    # the kernel accounted at their reaping; two alike, and the rest start together.
    s = EnsembleScheduler(["n"], default_reservation=300, margin=1.25, small=0)
    s.node_memory("n", 0, W)
    assert started(s.add(specs(None, None, None, None))) == [(0, "n")]
    assert started(s.task_exited(0, 0, rss=40)) == [(1, "n")]
    assert started(s.task_exited(1, 0, rss=44)) == [(2, "n"), (3, "n")]
    assert s.record(2).reservation == s.record(3).reservation == 55
    # A sample's measure, when there is one, is what a task's command learns from.
    s.task_usage(2, 8)
    s.task_exited(2, 0, rss=400)
    assert s.reservation_for(TaskSpec(4, ("work",), None, "work")) == (55, False)


def test_sizes_under_small_count_as_one() -> None:
    # A sample counts a task's own pages (1 here), the kernel's count at a task's end
    # includes its spawner's (40): both under ``small``, they are alike.
    s = EnsembleScheduler(["n"], default_reservation=100, margin=1.25, small=50)
    s.node_memory("n", 0, W)
    assert started(s.add(specs(None, None, None, None))) == [(0, "n")]
    s.node_memory("n", 1, tasks={0: 1}, now=1)
    assert started(s.node_memory("n", 1, tasks={0: 1}, now=2)) == [(1, "n")]
    assert started(s.task_exited(1, 0, rss=40)) == [(2, "n"), (3, "n")]


def test_one_unmeasured_guess_per_node() -> None:
    # Guesses start one by one, each once the previous one's peak held for a sample
    # (tasks of three commands: none has a size to go by).
    s = EnsembleScheduler(["a", "b"], default_reservation=100)
    s.node_memory("a", 0, W)
    s.node_memory("b", 0, W)
    tasks = [TaskSpec(i, (f"./sim{i}",), None, f"./sim{i}") for i in range(3)]
    assert started(s.add(tasks)) == [(0, "a"), (1, "b")]
    assert started(s.add(specs(None, None, None, 50)[3:])) == []  # FIFO behind task 2
    assert started(s.node_memory("a", 400, tasks={0: 400}, now=1)) == []  # still growing?
    assert started(s.node_memory("a", 400, tasks={0: 400}, now=2)) == [(2, "a"), (3, "b")]
    adm = s.admission("a")
    assert adm is not None and adm.reservation(0) == 400  # corrected up to the measure


def test_no_learning() -> None:
    s = EnsembleScheduler(["n"], learn=False, default_reservation=300)
    s.node_memory("n", 0, W)
    s.add(specs(None, argv=("./sim",)))
    s.task_usage(0, 10)
    s.task_exited(0, 0)
    (again,) = s.add([TaskSpec(1, ("./sim",), None, "./sim")])
    assert (again.reservation, again.declared) == (300, False)


def test_guess_is_capped_and_unschedulable_fails() -> None:
    s = EnsembleScheduler(["a", "b"], default_reservation=5000)
    s.add(specs(None, 2000, 50))
    # A guess never exceeds the largest high watermark known; a bound is kept as is.
    assert started(s.node_memory("a", 0, W)) == [(0, "a")]
    assert s.record(0).reservation == 1000
    assert s.record(1).status is TaskStatus.QUEUED  # b has not reported: 2000 might fit there
    assert started(s.node_memory("b", 0, Watermarks(1500, 1000))) == [(2, "b")]
    rec = s.record(1)
    assert rec.status is TaskStatus.FAILED
    assert rec.reason is not None and "more than any node's high watermark (1.5 KiB)" in rec.reason
    assert "task 1 (line 0): needs 2 KiB" in s.summary().format()


def test_guess_is_capped_at_what_the_node_can_give_once_our_tasks_end() -> None:
    # 300 of the node are in use by something else: a 1000-byte guess could never
    # pass 1000 - 300; capped at 700 it starts, and waits only for our own tasks.
    s = EnsembleScheduler(["n"], default_reservation=5000)
    s.node_memory("n", 300, W)
    assert started(s.add(specs(None))) == [(0, "n")]
    assert s.record(0).reservation == 700 and s.record(0).status is TaskStatus.RUNNING
    s.add(specs(None, None)[1:])
    s.node_memory("n", 600, W, tasks={0: 300})  # task 0 uses 300: foreign is still 300
    assert s.record(1).status is TaskStatus.QUEUED  # 600 + 400 unused + 700 > 1000
    assert started(s.task_exited(0, 0)) == [(1, "n")]  # learned: 300 x 1.25
    assert s.record(1).reservation == 375


def test_node_lost() -> None:
    s = EnsembleScheduler(["a", "b"], retries=1, slots=1)
    s.node_memory("a", 0, W)
    s.node_memory("b", 0, W)
    assert started(s.add(specs(10, 10, 10))) == [(0, "a"), (1, "b")]
    assert s.node_lost("a") == []  # task 0 goes back to the queue, behind task 2
    assert s.record(0).exit_codes == [None] and s.record(0).status is TaskStatus.QUEUED
    assert started(s.task_exited(1, 0)) == [(2, "b")]
    assert started(s.task_exited(2, 0)) == [(0, "b")]
    s.task_exited(0, 0)
    assert s.finished and s.summary().exit_codes[0] == (None, 0)
    alone = EnsembleScheduler(["a"])
    alone.node_memory("a", 0, W)
    alone.node_lost("a")
    alone.add(specs(10))
    assert alone.record(0).reason == "no node left to run it" and alone.finished


def test_add_rejects_a_known_index() -> None:
    s = EnsembleScheduler(["n"])
    s.add(specs(1))
    with pytest.raises(ValueError, match="already"):
        s.add(specs(1))
    with pytest.raises(ValueError, match="watermarks"):
        s.node_memory("n", 0)


# -------------------------------------------------------------- a real run in a cgroup

TOUCH = (
    "import sys, time\n"
    "b = bytearray(b'x') * (int(sys.argv[1]) << 20)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


@pytest.mark.cgroup
@pytest.mark.timeout(60)
async def test_ensemble_runs_in_a_capped_cgroup_without_oom(tmp_path: Path) -> None:
    """One node: the scheduler's decisions applied to real processes, fed by real samples."""
    script = tmp_path / "touch.py"
    script.write_text(TOUCH)
    lines = [f"[mem=80M] {sys.executable} -S {script} 64 0.4" for _ in range(6)]
    # No bound: these learn from the finished runs of the same script.
    lines += [f"{sys.executable} -S {script} 48 0.2" for _ in range(3)]
    lines.append(f"{sys.executable} -S -c 'raise SystemExit(3)'")
    tasks = parse_tasks("\n".join(lines))
    with memory_cgroup(256 * MiB) as cg:
        probe = NodeMemory(cg.path)
        sched = EnsembleScheduler(["local"], retries=1, default_reservation=100 * MiB, margin=1.25)
        procs: dict[int, asyncio.subprocess.Process] = {}
        exits: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        most = 0

        async def run(start: Start) -> None:
            proc = await asyncio.create_subprocess_exec(*cg.wrap(start.task.argv))
            procs[start.task.index] = proc
            await exits.put((start.task.index, await proc.wait()))

        async with asyncio.TaskGroup() as tg:

            def launch(starts: list[Start]) -> None:
                for st in starts:
                    tg.create_task(run(st))

            launch(sched.node_memory("local", probe.read().used, Watermarks(200 * MiB, 150 * MiB)))
            launch(sched.add(tasks))
            while not sched.finished:
                try:
                    index, code = await asyncio.wait_for(exits.get(), 0.05)
                    procs.pop(index)
                    launch(sched.task_exited(index, code))
                except TimeoutError:  # a sampling period passed
                    used = probe.read().used
                    sizes = {i: tree_rss(p.pid) for i, p in procs.items()}
                    launch(sched.node_memory("local", used, tasks=sizes))
                most = max(most, sched.progress().running)
        summary = sched.summary()
        assert cg.oom_kills() == 0
        assert summary.succeeded == 9 and summary.failed == 1
        assert summary.exit_codes[9] == (3, 3)
        assert most == 2  # two 80 MiB bounds fit under 200 MiB, never a third
        learned = [sched.record(i).reservation for i in (6, 7, 8)]
        assert all(64 * MiB < r < 100 * MiB for r in learned)  # peak of a 64 MiB run x 1.25


# ------------------------------------------------------------------------- job log


def test_the_job_log_has_gnu_parallels_columns(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = JobLog(str(path), append=False)
    log.record(TaskResult(0, (), 0, (0,), "n1", 0, 0, None, 100.0, 100.25), "echo a", 2)
    log.record(TaskResult(1, (), 137, (137,), "n2", 0, 0, None, 101.0, 101.5), "kill\t-9", 0)
    log.record(TaskResult(2, (), 3, (1, 3), "n1", 0, 0, None, 102.0, 103.0), "exit 3", 0)
    log.record(TaskResult(3, (), None, (None,), None, 0, 0, "lost", 0.0, 1.0), "x", 0)
    log.record(TaskResult(4, (), None, (), None, 0, 0, "not run: SIGTERM"), "y", 0)
    log.close()
    assert path.read_text().splitlines() == [
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand",
        "1\tn1\t100.000\t     0.250\t0\t2\t0\t0\techo a",
        "2\tn2\t101.000\t     0.500\t0\t0\t0\t9\tkill -9",
        "3\tn1\t102.000\t     1.000\t0\t0\t3\t0\texit 3",
        "4\t:\t0.000\t     1.000\t0\t0\t-1\t0\tx"]
    assert read_joblog(str(path)) == {1: True, 2: False, 3: False, 4: False}
    JobLog(str(path), append=True).close()  # no second header
    with path.open("a") as f:
        f.write("3\tn1\t104.000\t     1.000\t0\t0\t0\t0\texit 3\n")  # the rerun succeeded
    assert read_joblog(str(path))[3] is True
    assert path.read_text().count("Seq\t") == 1


def test_a_job_log_that_is_not_one_is_named(tmp_path: Path) -> None:
    assert read_joblog(str(tmp_path / "none")) == {}
    (tmp_path / "bad").write_text("Seq\tHost\n1\tn1\tx\n")
    with pytest.raises(UsageError, match="line 2 is not a job log's"):
        read_joblog(str(tmp_path / "bad"))


def test_running_median_and_a_limit_that_moves_with_it() -> None:
    import random
    import statistics

    from pm.ensemble.timeouts import RunLimit, RunningMedian

    rng = random.Random(7)
    median, seen = RunningMedian(), []
    assert median.value() is None
    for _ in range(201):
        x = rng.choice([rng.random(), 0.5, 3.0])
        median.add(x)
        seen.append(x)
        assert median.value() == statistics.median(seen)
    fixed = RunLimit(seconds=5)
    fixed.succeeded(1)
    assert (fixed.moving, fixed.seconds(), fixed.describe(5)) == (False, 5, "5 s")
    moving = RunLimit(fraction=2.0)
    assert (moving.moving, moving.seconds()) == (True, None)
    for run in (1.0, 3.0, 2.0):
        moving.succeeded(run)
    assert moving.seconds() == 4.0
    assert moving.describe(4.0) == "4 s (200% of the median successful run, 2 s)"
    assert RunLimit().seconds() is None
