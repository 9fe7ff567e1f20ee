"""The check: inputs, references, verdict rules, tolerances, what is verified and the run."""
