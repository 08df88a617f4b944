"""Data-plane benchmark: `python -m bench.dataplane [--quick] [--device cpu|cuda]`."""
