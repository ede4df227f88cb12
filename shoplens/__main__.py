"""``python -m shoplens`` is the same as the ``shoplens`` command."""

from shoplens.cli import main

main()
