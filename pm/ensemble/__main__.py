"""``python -m pm.ensemble runner INTERVAL``: a host's task runner (pm.ensemble.remote)."""

import sys

from pm.ensemble.remote import runner_main

if len(sys.argv) == 3 and sys.argv[1] == "runner":
    sys.exit(runner_main(float(sys.argv[2])))
sys.stderr.write("usage: python -m pm.ensemble runner INTERVAL\n")
sys.exit(2)
