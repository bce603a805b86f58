"""Training one run: the loop, its identity and fingerprint, checkpoint generations and resuming,
schedules, the memory check, progress lines, and what a finished run publishes."""
