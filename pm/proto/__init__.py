"""Wire formats: PMI-1, PMI-2, the native rank protocol, head/agent messages (sans-IO)."""
