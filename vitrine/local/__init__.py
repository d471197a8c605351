"""One machine's stack: private services, the demo's supervision, a folder of photos."""
