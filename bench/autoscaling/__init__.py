"""Autoscaling-signal benchmark: `python -m bench.autoscaling [--quick]`."""
