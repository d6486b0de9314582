"""The gate fixtures (placeholder until the plugin lands)."""
