"""Report: the views (tables), the report file and predict (the Python reference client)."""
