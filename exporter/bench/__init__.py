"""Bench: timing, results, the latency gate (regress) and statistics."""
