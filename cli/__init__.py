"""The `magnet-rt` command: one entry point over the whole project. `serve` and `keys` run the daemon's,
`train` the engine's trainer, and the render and query commands speak PROTOCOL.md through `clients`. It
lives outside `clients/` because it composes the daemon, the engine and the clients; `clients/` itself
imports only `protocol` (tests/test_import_graph.py)."""
