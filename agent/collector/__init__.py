"""The central collector: ingests report documents from agents, stores them in SQLite or
PostgreSQL, serves the API, /metrics and the dashboard (`opsagent server`)."""
