"""One-off research probes (scripts run as `python -m research.probes.<name>`); see each docstring."""
