"""The lines of an ensemble's memory probe (``python -m pm.ensemble probe``), sans-IO.

The probe runs as a rank of a job on another host and speaks on its stdout, so
its samples are text lines, one each::

    pmrun-probe TOTAL USED KIND cores=N INDEX=BYTES ...

TOTAL and USED the node's memory in bytes, KIND where the limit comes from
(``cgroup``, ``machine``), N the cores the probe may run on, and per task index
the anonymous resident bytes of that task's processes.  Anything else on the
stream (a warning of the interpreter) is not a sample.
"""

from __future__ import annotations

from pm.proto.record import Record

__all__ = ["ProbeSample"]

_WORD = "pmrun-probe"


class ProbeSample(Record):
    """One sample of a host's memory and of its tasks' usage."""

    total: int
    used: int
    kind: str
    cores: int | None
    #: Task index -> anonymous resident bytes.
    sizes: dict[int, int]

    def line(self) -> str:
        words = [_WORD, str(self.total), str(self.used), self.kind]
        if self.cores is not None:
            words.append(f"cores={self.cores}")
        words += [f"{i}={n}" for i, n in sorted(self.sizes.items())]
        return " ".join(words)

    @classmethod
    def parse(cls, line: str) -> ProbeSample | None:
        """The sample ``line`` holds, None if it holds none."""
        words = line.split()
        if len(words) < 4 or words[0] != _WORD:
            return None
        try:
            cores = None
            sizes: dict[int, int] = {}
            for key, _, value in (w.partition("=") for w in words[4:]):
                if key == "cores":
                    cores = int(value)
                else:
                    sizes[int(key)] = int(value)
            return cls(int(words[1]), int(words[2]), words[3], cores, sizes)
        except ValueError:
            return None
