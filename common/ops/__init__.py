"""What operators read: the status snapshot and the Prometheus metrics."""
