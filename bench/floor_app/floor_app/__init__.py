"""Flower's floor per update: an empty ClientApp and a minimal push/pull ServerApp."""
