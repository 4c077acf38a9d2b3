"""`python -m gateway` runs the edge-gateway command line."""

from gateway.cli import main

main()
