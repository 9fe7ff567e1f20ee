"""The export run: the run itself, stage scheduling, stage workers and the stage cache."""
