"""Node agent: spawns a node's ranks, serves them PMI, aggregates collectives."""
