"""The pipeline core: the run loop, journal, lock, run folder, downtime prober, gate runner."""
