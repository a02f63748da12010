"""fedbuff-deploy's task code, shared by the ServerApp and the ClientApp: run settings, models,
datasets, partitioners, the device model and the data of one run."""
