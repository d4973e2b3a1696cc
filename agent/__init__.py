"""opsagent: a per-host declarative ops agent."""

__version__ = "0.1.0"
