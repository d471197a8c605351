"""`python -m vitrine.cli` is the `vitrine` command (used to start background processes)."""

from vitrine.cli import main

main()
