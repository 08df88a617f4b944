"""End-to-end tests against the real local control plane: the `cluster` fixture (one per session) comes
from modeldeploy_dev.pytest_plugin, loaded for the whole suite by pyproject's pytest addopts."""
