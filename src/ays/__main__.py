"""``python -m ays`` runs the ``ays`` command."""

from ays.cli import main

main()
