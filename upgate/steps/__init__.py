"""Step adapters: backup, migrate, deploy and the rollback ladder. The pipeline talks to their base interfaces."""
