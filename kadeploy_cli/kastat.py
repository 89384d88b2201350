"""`kastat`: Statistics of past deployments."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kastat", "Statistics of past deployments.")
