"""`python -m llmasr ...`: the command line (llmasr.apps.cli)."""

from llmasr.apps.cli import main

main()
