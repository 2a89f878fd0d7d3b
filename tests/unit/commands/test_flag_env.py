"""Every flag of every command has its CDRPIPE_* variable: named in --help, and taken as the default when set."""
from __future__ import annotations

import argparse

import pytest

from pipeline import cli
from pipeline.commands import env

#: Names operators and the deploy manifests already use: each must still reach these flags.
KNOWN = {
    "CDRPIPE_BOOTSTRAP_SERVERS": ["run --bootstrap-servers", "produce --bootstrap-servers", "topics apply --bootstrap-servers",
                                  "vault sink --bootstrap-servers", "privacy worker --bootstrap-servers"],
    "CDRPIPE_KEYRING": ["process --keyring", "run --keyring", "token --keyring", "keys rotate --keyring"],
    "CDRPIPE_VAULT_KEYRING": ["vault query --keyring", "vault ingest --keyring", "vault migrate --keyring"],
    "CDRPIPE_VAULT_DB": ["vault ingest --db", "vault audit verify --db", "vault audit export --db"],
    "CDRPIPE_VAULT_KEYSTORE": ["vault query --keystore", "vault audit verify --keystore"],
    "CDRPIPE_VAULT_RETENTION": ["vault ingest --retention", "vault purge --retention"],
    "CDRPIPE_VAULT_TOPIC": ["vault sink --topic"], "CDRPIPE_VAULT_GROUP": ["vault sink --group"],
    "CDRPIPE_INPUT_TOPIC": ["run --input-topic", "produce --topic"],
    "CDRPIPE_ANALYTICS_TOPIC": ["run --analytics-topic"], "CDRPIPE_RETENTION_TOPIC": ["run --retention-topic"],
    "CDRPIPE_DLQ_TOPIC": ["run --dlq-topic"], "CDRPIPE_TOPIC_PREFIX": ["run --topic-prefix", "produce --topic-prefix"],
    "CDRPIPE_SUPPRESSIONS_TOPIC": ["run --suppressions-topic"], "CDRPIPE_WORKER_ID": ["run --worker-id"],
    "CDRPIPE_GROUP": ["run --group"], "CDRPIPE_BATCH_SIZE": ["run --batch-size"],
    "CDRPIPE_FORMAT": ["process --format", "run --format", "produce --format", "vault ingest --format"],
    "CDRPIPE_MAPPING": ["process --mapping", "vault reindex --mapping"], "CDRPIPE_REGION": ["process --region"],
    "CDRPIPE_POLICY": ["run --policy"], "CDRPIPE_SUPPRESSIONS": ["process --suppressions"],
    "CDRPIPE_WORKERS": ["process --workers"], "CDRPIPE_METRICS_PORT": ["run --metrics-port", "vault sink --metrics-port"],
    "CDRPIPE_OPERATOR": ["vault purge --operator", "vault subject-access --custodian"],
    "CDRPIPE_AUDIT_KEY": ["vault query --audit-key"], "CDRPIPE_AUDIT_WITNESS": ["vault purge --witness"],
    "CDRPIPE_AUDIT_PUBLIC_KEY": ["vault audit verify --public-key"], "CDRPIPE_LI_ORG": ["vault query --authorised-org"],
    "CDRPIPE_CSP_ID": ["vault query --csp-id"], "CDRPIPE_PRIVACY_REGISTER": ["privacy submit --register"],
    "CDRPIPE_TOPICS_FILE": ["topics apply --file", "acls show --file"], "CDRPIPE_BROKER_PORT": ["broker --port"],
    "CDRPIPE_BROKER_HEAP": ["broker --heap"], "CDRPIPE_DEMO_RECORDS": ["demo --records"], "CDRPIPE_DEMO_DIR": ["demo --dir"],
    "CDRPIPE_LOG_FORMAT": [" --log-format", "run --log-format"], "CDRPIPE_LOG_LEVEL": [" --log-level"],
    "CDRPIPE_INSECURE_KEY_PERMISSIONS": ["process --insecure-key-permissions"],
    "CDRPIPE_X_<KEY>": ["run -X", "produce -X", "vault sink -X"],
}


def _all_flags() -> list[tuple[str, argparse.Action, argparse.ArgumentParser]]:
    out = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                out.append((path, action, parser))

    walk(cli.build_parser(), "")
    return out


FLAGS = _all_flags()


def _key(path: str, action: argparse.Action) -> str:
    return f"{path} {env._long(action)}"


def test_every_command_has_flags_and_the_walk_sees_them_all():
    commands = {path.split()[0] for path, _a, _p in FLAGS if path}
    assert commands == set(cli.COMMANDS)
    assert len(FLAGS) > 300  # ~155 distinct flags, most on several commands


def test_each_flag_names_its_variable_in_help():
    missing = []
    for path, action, parser in FLAGS:
        name = env.env_name(path, env._long(action))
        if not name.startswith("CDRPIPE_"):
            missing.append(f"{_key(path, action)}: {name}")
        elif action.help is not argparse.SUPPRESS and not (
                name in action.help and name in " ".join(parser.format_help().split())):  # as `--help` shows it
            missing.append(f"{_key(path, action)}: {name} not in its help")
    # A hidden flag (privacy extend --today) has its variable too, but no help to show it in.
    assert missing == []


def test_the_names_operators_use_are_kept():
    names = {_key(path, action): env.env_name(path, env._long(action)) for path, action, _ in FLAGS}
    for name, flags in KNOWN.items():
        for flag in flags:
            assert names[flag] == name, flag


def test_one_variable_means_one_kind_of_value():
    """Flags that share a variable take the same kind of value (a list, a switch, a number, choices)."""
    shapes: dict[str, set[tuple]] = {}
    for path, action, _ in FLAGS:
        shape = (env.is_switch(action), env.is_list(action), action.type, tuple(action.choices or ()))
        shapes.setdefault(env.env_name(path, env._long(action)), set()).add(shape)
    assert {name: s for name, s in shapes.items() if len(s) > 1} == {}


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A value for the flag's variable and the default it must give."""
    if env.is_switch(action):
        return "1", isinstance(action, argparse._StoreTrueAction)
    if env.is_list(action):
        return "a=1, b=2", ["a=1", "b=2"]
    if action.choices:
        choice = str(list(action.choices)[-1])
        return choice, choice
    return "7", "7"


def test_each_variable_becomes_its_flags_default():
    wrong = []
    for path, action, _parser in FLAGS:
        option = env._long(action)
        name = env.env_name(path, option)
        if option == "-X":
            name, value, expected = "CDRPIPE_X_LINGER_MS", "9", ["linger.ms=9"]
        else:
            value, expected = _sample(action)
        fresh = cli.build_parser(path.split() or None)
        target = next(a for p, a, _ in _walk(fresh) if p == path and env._long(a) == option)
        before = target.default
        env.apply(fresh, {name: value})
        if target.default is argparse.SUPPRESS or name in env.READ_WHERE_USED and f"{path} {option}" not in \
                env.DEFAULT_FROM_ENV:
            ok = target.default == before  # read where it is used (or a flag that may stand before the command)
        else:
            ok = target.default == expected and not target.required
        if not ok:
            wrong.append(f"{_key(path, action)}: {name}={value!r} gave {target.default!r}")
    assert wrong == []


def _walk(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action, argparse.ArgumentParser]]:
    return list((p, a, parser) for p, a in env.flags(parser))


@pytest.mark.parametrize(("variables", "argv", "expected"), [
    ({"CDRPIPE_POLICY": "p.toml", "CDRPIPE_QUIET": "yes", "CDRPIPE_INPUT": "in.jsonl", "CDRPIPE_OUT_DIR": "o"},
     ["process"], {"policy": "p.toml", "quiet": True, "input": "in.jsonl", "out_dir": "o"}),
    ({"CDRPIPE_QUIET": "0", "CDRPIPE_PROCESS_BATCH_BYTES": "4096", "CDRPIPE_WORKERS": "3"},
     ["process", "--input", "x", "--out-dir", "o"], {"quiet": False, "batch_bytes": 4096, "workers": 3}),
    ({"CDRPIPE_BATCH_TIMEOUT": "0.25", "CDRPIPE_NO_FOLLOW_SUPPRESSIONS": "true", "CDRPIPE_X_LINGER_MS": "9"},
     ["run", "-X", "acks=all"], {"batch_timeout": 0.25, "no_follow_suppressions": True,
                                 "X": ["linger.ms=9", "acks=all"]}),
    ({"CDRPIPE_PRINCIPAL": "analytics=bi,worker=w1", "CDRPIPE_ACLS_SHOW_FORMAT": "json"},
     ["acls", "show"], {"principal": ["analytics=bi", "worker=w1"], "format": "json"}),
    ({"CDRPIPE_VAULT_QUERY_OUTPUT": "out.jsonl", "CDRPIPE_VAULT_DB": "v.db", "CDRPIPE_LOG_FORMAT": "json"},
     ["vault", "query"], {"output": "out.jsonl", "db": "v.db", "log_format": "json"}),
    ({"CDRPIPE_VAULT_AUDIT_CHECK_EXPORT_FILE": "d.jsonl", "CDRPIPE_SEQ": "4", "CDRPIPE_VAULT_DB": "v.db"},
     ["vault", "audit", "check-export"], {"file": "d.jsonl", "seq": 4}),
    ({"CDRPIPE_KEYS_GENERATE_DIR": "k"}, ["keys", "generate"], {"dir": "k"}),
    ({"CDRPIPE_KEYRING": "w.json"}, ["keys", "rotate"], {"keyring": "w.json"}),
    ({"CDRPIPE_KEYRING": "w.json", "CDRPIPE_TOKEN_KIND": "imsi"}, ["token", "v"], {"keyring": None, "kind": "imsi"}),
    ({"CDRPIPE_DEMO_SEED": "5", "CDRPIPE_DEMO_FILES": "on"}, ["demo"], {"seed": 5, "files": True}),
    ({"CDRPIPE_WINDOW": "900", "CDRPIPE_BOOTSTRAP_SERVERS": "k:1"}, ["aggregates", "worker"],
     {"window": 900, "bootstrap_servers": "k:1"}),
])
def test_variables_reach_the_parsed_flags(monkeypatch, variables, argv, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser(argv).parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_a_variable_of_the_wrong_type_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("CDRPIPE_BATCH_SIZE", "many")
    with pytest.raises(SystemExit) as exc:
        cli.main(["run"])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_the_command_line_wins_over_the_variable(monkeypatch):
    monkeypatch.setenv("CDRPIPE_GROUP", "from-env")
    assert cli.build_parser(["run"]).parse_args(["run", "--group", "from-flag"]).group == "from-flag"
