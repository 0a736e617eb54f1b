"""``python -m perfmodel``."""

from perfmodel.commands import main

main()
