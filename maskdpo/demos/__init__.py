"""Demonstrations that run the whole project end to end on a laptop (`maskdpo demo ...`): plainly
demos, not product features."""
