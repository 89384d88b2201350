"""`kapower`: Power nodes on or off, or query their power status."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kapower", "Power nodes on or off, or query their power status.")
