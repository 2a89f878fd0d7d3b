"""Every flag of every command has an environment variable: named here, read as its default, shown in --help.

One rule names them all, so operators can guess a name and ``cdrpipe COMMAND --help`` confirms it:

1. a name operators already use, from :data:`NAMES` (``CDRPIPE_BOOTSTRAP_SERVERS``, ``CDRPIPE_VAULT_DB``…);
2. ``CDRPIPE_<COMMAND>_<FLAG>`` for a flag whose name means different things in different commands
   (:data:`SCOPED_FLAGS`: ``--output`` of ``vault query`` is ``CDRPIPE_VAULT_QUERY_OUTPUT``) and
   for every flag of :data:`SCOPED_COMMANDS` (``CDRPIPE_DEMO_SEED``, as ``CDRPIPE_DEMO_RECORDS``);
3. else ``CDRPIPE_<FLAG>`` (``--batch-size``: ``CDRPIPE_BATCH_SIZE``).

Values are read when the parser is built, as a string a flag would take (argparse converts and
checks it the same way). A switch (``--quiet``) is on for 1, true, yes or on, off for anything
else. A flag that takes a list (``--principal``, ``--analytics``) takes comma-separated values;
``-X key=value`` takes its settings from ``CDRPIPE_X_<KEY>`` variables (dots as ``_``:
``CDRPIPE_X_SASL_PASSWORD``), the command line's coming after (and winning). A variable that the
code reads where the value is used (:data:`READ_WHERE_USED`: a keyring variable, which a keyring
given as JSON in ``CDRPIPE_*_KEYRING_JSON`` overrides) is shown but not made the default.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping

from pipeline.kafka_config import ENV_X_PREFIX, env_client_options

PREFIX = "CDRPIPE_"
#: ``-X key=value``: one variable per setting.
X_PREFIX = ENV_X_PREFIX
TRUE = ("1", "true", "yes", "on")

#: Names that differ from the rule's, by "<command path> <flag>" or "<flag>" (the longest match wins).
NAMES: dict[str, str] = {
    "--prefix": "CDRPIPE_TOPIC_PREFIX",  # topics/acls --prefix is the other commands' --topic-prefix
    "topics --file": "CDRPIPE_TOPICS_FILE",
    "acls --file": "CDRPIPE_TOPICS_FILE",
    "vault --keyring": "CDRPIPE_VAULT_KEYRING",
    "vault --db": "CDRPIPE_VAULT_DB",
    "vault --keystore": "CDRPIPE_VAULT_KEYSTORE",
    "vault --retention": "CDRPIPE_VAULT_RETENTION",
    "vault --audit-key": "CDRPIPE_AUDIT_KEY",
    "vault --witness": "CDRPIPE_AUDIT_WITNESS",
    "vault --public-key": "CDRPIPE_AUDIT_PUBLIC_KEY",
    "vault --custodian": "CDRPIPE_OPERATOR",
    "vault --input": "CDRPIPE_VAULT_INGEST_INPUT",  # retention envelopes, not raw CDRs
    "vault --topic": "CDRPIPE_VAULT_TOPIC",
    "vault --group": "CDRPIPE_VAULT_GROUP",
    "vault --authorised-org": "CDRPIPE_LI_ORG",
    "vault query --format": "CDRPIPE_VAULT_QUERY_FORMAT",  # an output format, not CDRPIPE_FORMAT's input format
    "vault migrate --from-keystore": "CDRPIPE_VAULT_MIGRATE_FROM_KEYSTORE",
    "vault migrate --to-keystore": "CDRPIPE_VAULT_MIGRATE_TO_KEYSTORE",
    "acls show --format": "CDRPIPE_ACLS_SHOW_FORMAT",
    "privacy export --format": "CDRPIPE_PRIVACY_EXPORT_FORMAT",
    "privacy --register": "CDRPIPE_PRIVACY_REGISTER",
    "produce --topic": "CDRPIPE_INPUT_TOPIC",  # the worker's input topic
}
#: Flags whose name means different things in different commands: each command's has its own variable.
SCOPED_FLAGS = frozenset({
    "--batch-bytes", "--data-dir", "--dir", "--file", "--force", "--from", "--id", "--kind", "--officer",
    "--out", "--output", "--reason", "--request-id", "--subject", "--timeout", "--to", "--today", "--topic",
})
#: Commands whose own flags all carry the command's name (as CDRPIPE_BROKER_PORT, CDRPIPE_DEMO_RECORDS do).
SCOPED_COMMANDS = frozenset({"broker", "demo"})
#: Flags shared with other commands, never scoped by :data:`SCOPED_COMMANDS`.
SHARED = frozenset({"--bootstrap-servers", "--topic-prefix", "--log-level", "--log-format",
                    "--insecure-key-permissions"})
#: Variables read where the value is used, shown in --help but not made the flag's default: the
#: keyring loaders prefer ``CDRPIPE_*_KEYRING_JSON`` to them, a purge given --before must not
#: also see a retention period from the environment, a bad broker port is named as a variable, and
#: the topic policy's variable is read wherever the policy is (not only by --file's commands).
READ_WHERE_USED = frozenset({"CDRPIPE_KEYRING", "CDRPIPE_VAULT_KEYRING", "CDRPIPE_VAULT_RETENTION",
                             "CDRPIPE_AUDIT_KEY", "CDRPIPE_BROKER_PORT", "CDRPIPE_TOPICS_FILE"})
#: ... except in these commands, which need the value itself.
DEFAULT_FROM_ENV = frozenset({"keys rotate --keyring"})


def _upper(text: str) -> str:
    """``vault query --output`` -> ``VAULT_QUERY_OUTPUT``."""
    return "_".join(word.strip("-").upper().replace("-", "_") for word in text.split())


def env_name(path: str, option: str) -> str:
    """The variable of ``option`` (its long form) in the command ``path`` ("vault query")."""
    words = path.split()
    for n in range(len(words), -1, -1):
        name = NAMES.get(" ".join([*words[:n], option]))
        if name:
            return name
    if option == "-X":
        return X_PREFIX + "<KEY>"
    if option in SCOPED_FLAGS or words[:1] and words[0] in SCOPED_COMMANDS and option not in SHARED:
        return PREFIX + _upper(f"{path} {option}")
    return PREFIX + _upper(option)


def _long(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def flags(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.Action]]:
    """Every option of ``parser`` and its sub-commands, with its command path; not ``--help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from flags(sub, f"{path} {name}".strip())
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action


def is_switch(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def is_list(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")


def x_settings(environ: Mapping[str, str]) -> list[str]:
    """``CDRPIPE_X_<KEY>`` variables as ``-X key=value`` items (``SASL_PASSWORD`` -> ``sasl.password``)."""
    return [f"{key}={value}" for key, value in env_client_options(environ).items()]


def env_default(action: argparse.Action, value: str) -> object:
    """The default a flag takes from its variable's ``value``."""
    if is_switch(action):
        on = value.strip().lower() in TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    if is_list(action):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def apply(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Give every flag under ``parser`` its variable: as its default when set, and named in its help."""
    environ = os.environ if environ is None else environ
    for path, action in flags(parser):
        option = _long(action)
        name = env_name(path, option)
        if action.help is not argparse.SUPPRESS and name not in (action.help or ""):
            note = f"env {name}" + (" with dots as _" if option == "-X" else ", comma-separated" if is_list(action)
                                    else "=1" if is_switch(action) else "")
            action.help = f"{action.help} ({note})" if action.help else note
        if action.default is argparse.SUPPRESS:  # a flag that may also stand before the command
            continue
        if option == "-X":
            items = x_settings(environ)
            if items:
                action.default = items
            continue
        if name in READ_WHERE_USED and f"{path} {option}" not in DEFAULT_FROM_ENV:
            continue
        value = environ.get(name)
        if value is not None and (value != "" or is_switch(action)):
            action.default = env_default(action, value)
            action.required = False
