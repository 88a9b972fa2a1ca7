"""`python -m studio.cli ...` runs the `studio` command (handy with `python -X importtime`)."""

from studio.cli import main

main()
