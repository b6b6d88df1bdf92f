# The part of CPython's _signal (the C module behind signal.py) pmrun uses where
# importing signal.py would cost its enum and functools imports (pm.quick).
from collections.abc import Callable
from types import FrameType

SIGALRM: int
SIGCONT: int
SIGHUP: int
SIGINT: int
SIGQUIT: int
SIGKILL: int
SIGPIPE: int
SIGSTOP: int
SIGTERM: int
SIGTSTP: int
SIGUSR1: int
SIGUSR2: int
SIG_DFL: int
SIG_IGN: int

_Handler = Callable[[int, FrameType | None], object] | int | None

def signal(signalnum: int, handler: _Handler, /) -> _Handler: ...
def set_wakeup_fd(fd: int, /, *, warn_on_full_buffer: bool = ...) -> int: ...
def getsignal(signalnum: int, /) -> _Handler: ...
def default_int_handler(signalnum: int, frame: FrameType | None, /) -> None: ...
def pidfd_send_signal(pidfd: int, sig: int, siginfo: None = ..., flags: int = ..., /) -> None: ...
