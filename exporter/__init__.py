"""Export stages (one module per format), the bundle pipeline, the check, runners and benchmarks."""

__version__ = "0.1.0"
