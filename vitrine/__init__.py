"""Vitrine's command line and the operator's tooling around the product library (`common/`):
the demo's supervision, private services for development, the study and the benchmarks."""
