"""``python -m pm.ensemble probe TOKEN INTERVAL``: a host's memory probe (pm.ensemble.remote)."""

import sys

from pm.ensemble.remote import probe_main

if len(sys.argv) == 4 and sys.argv[1] == "probe":
    sys.exit(probe_main(sys.argv[2], float(sys.argv[3])))
sys.stderr.write("usage: python -m pm.ensemble probe TOKEN INTERVAL\n")
sys.exit(2)
