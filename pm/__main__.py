"""``python -m pm``: the same as the ``pmrun`` command."""

from pm.quick import main

main()
