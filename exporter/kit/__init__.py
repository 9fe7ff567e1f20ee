"""Everything a format plugin may import: options, the export context, capture, prepare, calibration and records (docs/plugins.md)."""
