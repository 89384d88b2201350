"""`kadeploy`: Deploy an environment onto nodes."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kadeploy", "Deploy an environment onto nodes.")
