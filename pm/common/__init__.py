"""What the head, the agents and the ensemble runner share: not the head's, not an agent's.

The agent tree's shape (:mod:`~pm.common.kary_tree`), host lists, rank placement and
``PMI_process_mapping`` (:mod:`~pm.common.mapping`), the job's node list
(:mod:`~pm.common.nodes`), output lines (:mod:`~pm.common.output`) and their writer
(:mod:`~pm.common.output_writer`).
Kept light: pmrun's quick phase imports some of it before asyncio.
"""
