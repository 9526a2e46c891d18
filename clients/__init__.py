"""Clients of the magnet-rt daemon: the Python library (`client`, `aio`), the `magnet-rt` CLI (`cli`), live
audition (`audition`), and a fake daemon for client tests (`fakedaemon`). Max and Pd patches live in max/ and pd/."""
