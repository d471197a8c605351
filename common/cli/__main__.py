"""`python -m common.cli` is the `vitrine` command (used to start background processes)."""

from common.cli import main

main()
