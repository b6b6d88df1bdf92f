"""``python -m pm.ensemble runner INTERVAL [UNIT [activity]]``: a host's task runner
(pm.ensemble.remote); UNIT: what it counts as the host's CPUs (thread, core, socket);
``activity``: its samples tell the host's load, swapping and disks too."""

import sys

from pm.ensemble.remote import runner_main

if len(sys.argv) in (3, 4, 5) and sys.argv[1] == "runner":
    sys.exit(runner_main(float(sys.argv[2]), *sys.argv[3:]))
sys.stderr.write("usage: python -m pm.ensemble runner INTERVAL [thread|core|socket [activity]]\n")
sys.exit(2)
