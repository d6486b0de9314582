"""What a run leaves for people: terminal output, summary, charts, metrics, audit log, history."""
