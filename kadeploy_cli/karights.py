"""`karights`: Grant, revoke and list users' rights on nodes."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("karights", "Grant, revoke and list users' rights on nodes.")
