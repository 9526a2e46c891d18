"""The magnet-rt daemon: a resident MAGNeT engine behind one ZeroMQ ROUTER socket (protocol/PROTOCOL.md).

`server.main(argv)` is `magnet-rt serve`; `keys.main(argv)` is `magnet-rt keys`.
"""
