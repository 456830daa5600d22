"""``python -m specad`` runs the command line."""

from specad.cli import main

main()
