"""Kadeploy3-style command-line tools: thin clients of the kadeployd REST API."""
