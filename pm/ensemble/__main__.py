"""``python -m pm.ensemble runner INTERVAL [UNIT [activity]]``: a host's task runner
(pm.ensemble.remote); UNIT: what it counts as the host's CPUs (thread, core, socket);
``activity``: its samples tell the host's load, swapping and disks too."""

import sys

from pm.ensemble.remote import main

sys.exit(main(sys.argv[1:]))
