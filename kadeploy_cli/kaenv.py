"""`kaenv`: Manage the environment catalogue."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kaenv", "Manage the environment catalogue.")
