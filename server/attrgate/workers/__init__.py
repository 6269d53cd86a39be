"""`attrgate serve --workers N`: N server processes behind one parent.

The parent (supervisor.py) never starts gRPC: it makes sure the listening ports are free (and
picks ephemeral ones) while holding them for its workers (ports.py), spawns each worker as a
fresh `python -m attrgate serve` process that builds its own server, Cognito client and stores
(child.py), relays SIGTERM, SIGINT, SIGHUP and SIGQUIT to them, copies their decision log from
stdout to its own in whole lines (relay.py), and serves the sum of their /metrics
(aggregate.py). A worker that exits on its own stops the others: the parent exits 1 and the
orchestrator restarts the pod.
"""
