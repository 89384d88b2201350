"""The testbed: emulated bare-metal nodes with real SSH, PXE over TFTP, IPMI power and disks.

It is a separate package: the daemon never imports it and learns about the testbed only through
the configuration directory that ``kadeploy-testbed up`` writes.
"""
