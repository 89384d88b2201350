"""The vocabulary that the daemon, its API and the command-line tools share.

Pure: no actor, adapter, server or I/O beyond reading a file a user named. Node states and
the state table (:mod:`~kadeploy_core.machine`), macrostep/variant/microstep plans
(:mod:`~kadeploy_core.plans`) and their retry policy (:mod:`~kadeploy_core.policy`), step names,
breakpoints and custom steps, node lists and ranges, environment descriptions, and the API's
request and response schemas (:mod:`~kadeploy_core.schemas`). ``kadeploy_cli`` imports this
package and its HTTP client, nothing else of the daemon (a test checks it).
"""
