"""`kanodes`: Show nodes' current state, environment and owner."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kanodes", "Show nodes' current state, environment and owner.")
