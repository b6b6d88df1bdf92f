"""Wire formats, sans-IO: bytes in, typed messages out.

PMI-1 (``pmi1``), PMI-2 (``pmi2``), the native rank protocol (``native``), spawn
requests on those wires (``spawn``), the shared-memory KVS layout (``shm_layout``);
and pmrun's own, all typed records (``record``): the head/agent tree messages
(``tree_wire``) and the frames that carry them over a link (``tree_frames``), the
persistent service's (``service_wire``), the agent config and the job plan
(``plan``), the ensemble probe's lines (``probe``).  ``errors``: the one exception
family.
"""
