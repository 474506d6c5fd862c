"""`python -m edgecnn` and `torchrun -m edgecnn train ...` enter here."""

from edgecnn.cli import main

main()
