"""`kadeploy-testbed`: placeholder until the testbed issue lands."""

from kadeploy_cli.stub import not_implemented

main = not_implemented("kadeploy-testbed", "Emulated bare-metal nodes for tests and benchmarks.")
