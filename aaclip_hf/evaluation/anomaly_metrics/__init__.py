"""The `evaluate` metric module folder (see `anomaly_metrics.py`); only this `__init__` is not part of it."""
