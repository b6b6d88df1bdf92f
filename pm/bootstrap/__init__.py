"""Ways to start node agents on hosts: one module each, behind pm.bootstrap.base."""
