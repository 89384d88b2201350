"""`kareboot`: Reboot nodes (simple, into the deploy env, into a recorded env)."""

from kadeploy_cli.stub import not_implemented

main = not_implemented(
    "kareboot", "Reboot nodes (simple, into the deploy env, into a recorded env)."
)
