"""The ServerApp: an asynchronous dispatcher over Flower's Grid.

How a reply becomes a new global model: docs/architecture.md, "One update's path".
"""
