"""The analytics policy: which source fields reach analytics, and transformed how.

A policy is an allow-list. A field it does not name never reaches analytics, however
deeply nested, because the analytics record is *built* from the named fields rather
than filtered from the input. Actions are registered by name in
the native core (``native/src/route.rs``); this module only reads and checks the TOML file::

    [fields]
    cli = "token:msisdn"            # or token:msisdn:monthly, a token that changes every month
    ip = "truncate_ip:24/48"
    start = "coarsen_time:hour"
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.core.tokenise import KINDS

#: Fields every raw v1 record must carry, whatever the policy says about analytics.
REQUIRED_FIELDS = ("cli", "dialled", "start", "duration")
TIME_UNITS = {"second": "1s", "minute": "1m", "hour": "1h", "day": "1d"}
#: ``token:<kind>:<period>``: a token that changes each period of the record's start (UTC), so a
#: product that must not link a subscriber across periods cannot (see docs/privacy.md).
TOKEN_PERIODS = ("monthly",)
#: The actions the core carries out (``native/src/binding.rs`` maps each name to its code).
ACTIONS = ("token", "keep", "truncate_ip", "coarsen_time", "generalise_cell", "drop")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the field and the accepted actions."""


@dataclass(frozen=True)
class Rule:
    """One field's action, parsed: ``token:msisdn`` -> Rule("cli", "token", "msisdn")."""

    field: str
    action: str
    arg: str | None = None


@dataclass(frozen=True)
class Policy:
    """An ordered allow-list of field rules."""

    rules: tuple[Rule, ...]
    name: str = "custom"

    @property
    def emitted(self) -> tuple[Rule, ...]:
        """Rules whose field reaches analytics (everything but ``drop``)."""
        return tuple(r for r in self.rules if r.action != "drop")

    def rule(self, field: str) -> Rule | None:
        return next((r for r in self.rules if r.field == field), None)


def parse_rule(field: str, spec: object) -> Rule:
    """Parse and check one ``field = "action[:arg]"`` entry."""
    if not _FIELD_NAME.match(field):
        raise PolicyError(f"field name {field!r} is not a plain top-level field name")
    if not isinstance(spec, str):
        raise PolicyError(f"field {field!r}: the action must be a string such as \"keep\" or \"token:msisdn\"")
    action, _, arg = spec.partition(":")
    arg = arg or None
    if field == "record_id" and spec not in ("token:record", "keep", "drop"):
        raise PolicyError("field 'record_id': use token:record (a keyed id, stable for deduplication), "
                          "keep (only ids with no 7-digit run reach analytics) or drop")
    if action == "token":
        kind, _, period = (arg or "").partition(":")
        if kind not in KINDS:
            raise PolicyError(f"field {field!r}: token needs a kind, one of {', '.join(KINDS)} (e.g. token:msisdn)")
        if kind == "record" and (field != "record_id" or period):
            raise PolicyError(f"field {field!r}: token:record is for record_id only, and has no period")
        if period and period not in TOKEN_PERIODS:
            raise PolicyError(f"field {field!r}: a token's period must be one of {', '.join(TOKEN_PERIODS)} "
                              f"(e.g. token:{kind}:monthly, a token that changes every month)")
    elif action == "truncate_ip":
        m = re.fullmatch(r"(\d{1,2})/(\d{1,3})", arg or "")
        if not m or not (0 < int(m[1]) <= 32 and 0 < int(m[2]) <= 128):
            raise PolicyError(f"field {field!r}: truncate_ip needs <v4 bits>/<v6 bits>, e.g. truncate_ip:24/48")
    elif action == "coarsen_time":
        if arg not in TIME_UNITS:
            raise PolicyError(f"field {field!r}: coarsen_time needs a unit, one of {', '.join(TIME_UNITS)}")
    elif action in ("keep", "generalise_cell", "drop"):
        if arg is not None:
            raise PolicyError(f"field {field!r}: {action} takes no argument")
    else:
        raise PolicyError(f"field {field!r}: unknown action {action!r}; use token:<kind>, keep, "
                          "truncate_ip:<v4>/<v6>, coarsen_time:<unit>, generalise_cell or drop")
    return Rule(field, action, arg)


def policy_from_toml(text: str, name: str = "custom") -> Policy:
    """Build a policy from TOML text with a ``[fields]`` table."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {name} is not valid TOML: {exc}") from None
    fields = doc.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise PolicyError(f"policy {name} needs a non-empty [fields] table")
    unknown = set(doc) - {"fields", "policy"}
    if unknown:
        raise PolicyError(f"policy {name}: unknown section(s) {', '.join(sorted(unknown))}")
    return Policy(tuple(parse_rule(f, spec) for f, spec in fields.items()), name)


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in ``path``, or the packaged default policy for raw CDR v1."""
    if path is None:
        text = resources.files("pipeline.data").joinpath("default-policy.toml").read_text()
        return policy_from_toml(text, "default")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    return policy_from_toml(text, str(path))
