"""What a Python rank imports to talk to its node agent."""
