"""The ServerApp: an asynchronous dispatcher over Flower's Grid (DESIGN.md §3)."""
