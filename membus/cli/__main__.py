"""``python -m membus.cli``: the same command line as the ``membus`` script."""

from membus.cli.app import main

main()
