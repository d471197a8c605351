"""Every benchmark: figures measured side by side in one run."""
