"""Development tooling for modeldeploy: the local control plane (`devcluster`) and the demo.

Not part of the product: it finds the repository's own files (the Go module wrappers, the chart, the
examples) and so only works from a checkout. It is installed by `make setup` from `dev/pyproject.toml`
(distribution `modeldeploy-dev`, command `modeldeploy-dev`) and never ships in the wheel or the images.
"""
