"""fedbuff-deploy: shared task code (model, data, run settings) and the local launcher."""
