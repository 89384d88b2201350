"""Secrets kept out of logs and answers: power command lines shown with their secret values
replaced by ``***``.

A power command template may use ``vars`` holding a BMC password (``ipmitool -P
"{ipmi_password}"``). The rendered argument list is what runs, but never what is logged or
returned: the *shown* command line is the template rendered with every secret value masked,
and any text coming back from the command (its stderr, quoted in error messages) has the
secret values replaced.

A variable is secret when its name looks secret (contains password, passwd, pass, secret,
token or key, in any case, but does not end in ``_file`` or ``_path``: the path of a password
file is shown) or when it is listed in the node's ``power.secret_vars``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from kadeployd.config.model import Node
from kadeployd.config.templates import CommandTemplate

MASK = "***"
SECRET_NAME = re.compile(r"pass|secret|token|key", re.IGNORECASE)
"""Variable names whose values are masked (``ipmi_password``, ``bmc_passwd``, ``api_key``)."""
PATH_NAME = re.compile(r"_(file|path)$")
"""...unless they name a file holding the secret (``ipmi_password_file``): a path is shown."""
PATHS = frozenset({"ssh_key"})
"""Built-in fields that are paths (the SSH identity file), shown as they are."""


def is_secret_name(name: str, configured: Iterable[str] = ()) -> bool:
    """True when the variable ``name`` holds a secret."""
    if name in set(configured):
        return True
    if name in PATHS or PATH_NAME.search(name):
        return False
    return SECRET_NAME.search(name) is not None


def secret_values(values: Mapping[str, str], configured: Iterable[str] = ()) -> tuple[str, ...]:
    """The non-empty values of the secret variables, longest first (so that a secret which
    contains another is masked whole)."""
    named = set(configured)
    found = {v for k, v in values.items() if v and is_secret_name(k, named)}
    return tuple(sorted(found, key=len, reverse=True))


def shown_command(
    template: CommandTemplate, values: Mapping[str, str], configured: Iterable[str] = ()
) -> str:
    """The command line ``template`` renders to, secret values replaced by ``***``: those of
    secret variables, wherever they appear."""
    named = set(configured)
    masked = {k: (MASK if is_secret_name(k, named) else v) for k, v in values.items()}
    # A secret also written literally in the template is masked too.
    return redact(" ".join(template.render(masked)), secret_values(values, named))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def node_secrets(node: Node) -> tuple[str, ...]:
    """The secret values among ``node``'s template values."""
    return secret_values(node.template_values(), node.settings.power.secret_vars)
