"""The agent service (`opsagent run`) and what it needs: config, sources, events."""
