"""``python -m pm``: the same as the ``pmrun`` command."""

import _signal

# (As the pmrun script: a Ctrl-C while pmrun imports ends it by SIGINT, without a traceback.)
if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)

from pm.quick import main

main()
