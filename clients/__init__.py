"""Clients of the magnet-rt daemon: the Python library (`client`, `aio`), the OSC bridge (`osc`, its folder of
takes `output_dir`), live audition (`audition`), and a fake daemon for client tests (`fakedaemon`). Max and Pd
patches live in max/ and pd/, the DAW plugin in plugin/; the `magnet-rt` command is the top-level `cli` package."""
