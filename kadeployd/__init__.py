"""kadeployd: deploys operating-system images onto bare-metal cluster nodes.

The daemon package. It never imports ``kadeploy_cli`` or ``kadeploy_testbed``.
"""

__version__ = "0.1.0"
