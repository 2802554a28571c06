"""The sans-I/O protocol core: bytes in, values and bytes out.

Nothing in this package opens a socket, reads a clock, sleeps or starts a
thread; time and randomness that matter come in as arguments.
"""
