"""The Kadeploy3 3.x commands (``kadeploy3``, ``kareboot3``, ...), option for option.

Existing Kadeploy3 scripts and tools call these names and parse what they print, so each
command here reproduces Kadeploy3's options, messages, output formats and exit codes on top of
kadeployd's API. The native tools (``kadeploy``, ``kareboot``, ...) keep their own interface.
"""
