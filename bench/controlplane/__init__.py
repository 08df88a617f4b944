"""Control-plane benchmark: the operator against the real local control plane (see run.py)."""
