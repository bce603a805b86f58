"""The local worker-pool stack: PostgreSQL, the Prefect server, the work pool with its limits,
the zombie-run automation, the deployments and N process workers (`python -m pool up|down`)."""
