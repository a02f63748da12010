"""A hostile ClientApp and the runtime that runs it on a real SuperNode in place of the project's.

A device's owner controls the software on it: the SuperNode may be Flower's, but the process
that answers its tasks can be anything. :mod:`tests.hostile_app.client` is such a ClientApp;
``python -m tests.hostile_app`` is Flower's own ``flwr-clientapp`` runtime with that ClientApp
standing where the run's FAB names the project's (see ``__main__``).
"""
