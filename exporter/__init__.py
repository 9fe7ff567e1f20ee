"""Export stages (one module per format), the bundle pipeline and its records."""

__version__ = "0.1.0"
