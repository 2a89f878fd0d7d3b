"""Policy files: actions checked by name, clear errors, default allow-list."""
from __future__ import annotations

import pytest

from pipeline.policy import ACTIONS, PolicyError, load_policy, policy_from_toml


def test_default_policy_names_only_registered_actions():
    policy = load_policy()
    assert policy.name == "default"
    assert {r.action for r in policy.rules} <= set(ACTIONS)
    assert policy.rule("cli").arg == "msisdn" and policy.rule("dialled").arg == "msisdn"


@pytest.mark.parametrize("spec,needle", [
    ('cli = "token:phone"', "token needs a kind"),
    ('ip = "truncate_ip:40/48"', "truncate_ip"),
    ('start = "coarsen_time:fortnight"', "coarsen_time"),
    ('x = "hash"', "unknown action"),
    ('x = 3', "must be a string"),
    ('"a.b" = "keep"', "plain top-level"),
])
def test_bad_rules_are_explained(spec, needle):
    with pytest.raises(PolicyError, match=needle):
        policy_from_toml(f"[fields]\n{spec}\n")


def test_missing_fields_table_and_bad_toml():
    with pytest.raises(PolicyError, match=r"\[fields\]"):
        policy_from_toml("[other]\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        policy_from_toml("[fields\n")
