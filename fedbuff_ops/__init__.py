"""Operator tools of fedbuff-deploy: the ``fedbuff`` command (local federations, resume, the
fairness comparison), the local launcher and what it writes (federation record, node keys, the
lean ``flwr-clientapp``). Nothing here runs inside a ServerApp or a ClientApp."""
