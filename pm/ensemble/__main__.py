"""``python -m pm.ensemble runner INTERVAL [UNIT]``: a host's task runner
(pm.ensemble.remote); UNIT: what it counts as the host's CPUs (thread, core, socket)."""

import sys

from pm.ensemble.remote import runner_main

if len(sys.argv) in (3, 4) and sys.argv[1] == "runner":
    sys.exit(runner_main(float(sys.argv[2]), *sys.argv[3:]))
sys.stderr.write("usage: python -m pm.ensemble runner INTERVAL [thread|core|socket]\n")
sys.exit(2)
