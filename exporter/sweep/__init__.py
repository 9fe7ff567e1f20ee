"""Sweep: many exports on Dask, and the scheduler handshake probe."""
