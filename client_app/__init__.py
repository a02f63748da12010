"""The ClientApp: local training on a device, with optional device-tier emulation."""
