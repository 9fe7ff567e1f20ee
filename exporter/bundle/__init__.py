"""The bundle on disk: the manifest (type, reading, writing, schema) and the claim on --out."""
