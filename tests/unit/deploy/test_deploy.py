"""One source of truth: deploy/ says what the topic policy and the ACL matrix say, and parses.

deploy/k8s/ is a static kustomize base (workloads, edited by hand; images and replicas are
kustomize fields) with generated Strimzi topics and users (deploy/render.py). These tests fail
when a generated file is stale, when a KafkaTopic or KafkaUser differs from the policy or the
matrix, when a pod receives a secret it must not hold, or when a container's command is not one
`cdrpipe` accepts. They check the workloads as kustomize builds them; the compose file is
hand-written, so it is checked against the same sources.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline import acl, cli
from pipeline.acl import (MATRIX, AclMatrixError, Binding, Grant, Operation, Pattern, Principal,
                          ResourceKind, bindings, check_matrix, topic_access)
from pipeline.apps.options import SUPPORTED_X
from pipeline.broker import KAFKA_VERSION
from pipeline.keys import ENV_VAULT_KEYRING_JSON, ENV_WORKER_KEYRING_JSON
from pipeline.topics import load_topic_policy

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "vault-postgres"
COMPOSE = DEPLOY / "compose.yaml"
POLICY = {s.name: s for s in load_topic_policy(REPO / "pipeline" / "data" / "topics.toml")}

#: The access the brief asks for, written out by hand (not derived from the matrix).
EXPECTED_READS = {
    "mediation": set(),
    "worker": {"cdr.raw", "privacy.suppressions"},
    "vault": {"cdr.retention"},
    "privacy": {"privacy.requests"},
    "aggregates": {"cdr.analytics"},
    "dpo": {"cdr.analytics"},  # `cdrpipe privacy export` (subject access)
    "analytics": {"cdr.analytics", "cdr.aggregates"},
    "operations": {"cdr.dlq"},
    "auditor": {"vault.audit"},  # the audit witness (issue 14)
}
EXPECTED_WRITES = {
    "mediation": {"cdr.raw"},
    "worker": {"cdr.analytics", "cdr.retention", "cdr.dlq"},
    "vault": {"vault.audit"},  # Write only: it cannot delete or alter its witness
    "privacy": {"privacy.suppressions", "privacy.erasures"},
    "aggregates": {"cdr.aggregates"},
    "dpo": {"privacy.requests"},
    "analytics": set(),
    "operations": set(),
    "auditor": set(),
}


def _render_module() -> ModuleType:
    """deploy/render.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("cdrpipe_deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


@pytest.fixture(scope="module")
def yaml() -> ModuleType:
    """PyYAML, to parse the files as Kubernetes and Compose would (skipped where not installed)."""
    return pytest.importorskip("yaml", reason="PyYAML parses the manifests; pip install pyyaml")


def _kustomized(yaml: ModuleType, docs: list[dict[str, Any]], kustomization: Path) -> list[dict[str, Any]]:
    """The documents with the kustomization's ``images`` and ``replicas`` applied, as kustomize applies them."""
    kust = yaml.safe_load(kustomization.read_text())
    images = {i["name"]: i for i in kust.get("images", [])}
    replicas = {r["name"]: r["count"] for r in kust.get("replicas", [])}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] in replicas:
            doc["spec"]["replicas"] = replicas[doc["metadata"]["name"]]
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else \
            doc["spec"]["template"]["spec"] if doc["kind"] in ("Deployment", "StatefulSet", "Job") else {}
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if c["image"] in images:
                c["image"] = f"{images[c['image']].get('newName', c['image'])}:{images[c['image']]['newTag']}"
    return docs


def _docs(yaml: ModuleType, name: str, where: Path = BASE) -> list[dict[str, Any]]:
    """The documents of one manifest file, as its kustomization builds them."""
    return _kustomized(yaml, [d for d in yaml.safe_load_all((where / name).read_text()) if d is not None],
                       where / "kustomization.yaml")


def _all_docs(yaml: ModuleType) -> Iterator[dict[str, Any]]:
    """Every document of every manifest file of the base."""
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from _docs(yaml, path.name)


# --------------------------------------------------------------------------- the matrix


def test_matrix_gives_each_principal_exactly_the_access_the_brief_asks_for() -> None:
    """Reads and writes per role, prefixes resolved, equal the hand-written table above."""
    access = topic_access(MATRIX, list(POLICY))
    assert set(access) == set(EXPECTED_READS)
    for role, per_topic in access.items():
        reads = {t for t, ops in per_topic.items() if Operation.READ in ops}
        writes = {t for t, ops in per_topic.items() if Operation.WRITE in ops}
        assert reads == EXPECTED_READS[role], role
        assert writes == EXPECTED_WRITES[role], role


def test_matrix_passes_its_own_invariant_against_the_policy() -> None:
    """The shipped matrix names only policy topics and keeps raw data with its single reader."""
    check_matrix(MATRIX, list(POLICY))


def _with_grant(role: str, grant: Grant) -> tuple[Principal, ...]:
    """The matrix with one more grant for ``role``."""
    return tuple(Principal(p.role, p.user, p.purpose, p.grants + ((grant,) if p.role == role else ()))
                 for p in MATRIX)


@pytest.mark.parametrize("role,grant,why", [
    ("analytics", Grant(ResourceKind.TOPIC, "cdr.raw", (Operation.READ,)), "cdr.raw"),
    ("worker", Grant(ResourceKind.TOPIC, "cdr.retention", (Operation.READ,)), "cdr.retention"),
    ("analytics", Grant(ResourceKind.TOPIC, "cdr.", (Operation.READ,), Pattern.PREFIX), "covers"),
    ("operations", Grant(ResourceKind.TOPIC, "cdr.dlq.v2", (Operation.READ,)), "does not define"),
])
def test_check_matrix_refuses_a_drifted_matrix(role: str, grant: Grant, why: str) -> None:
    """A grant that lets someone read restricted data, or names an unknown topic, is refused."""
    with pytest.raises(AclMatrixError, match=re.escape(why)):
        check_matrix(_with_grant(role, grant), list(POLICY))


def test_matrix_names_match_the_apps_defaults() -> None:
    """Groups and transactional ids granted are the ones the worker and the vault sink use."""
    sink = importlib.import_module("pipeline.vault.sink")
    assert acl.VAULT_GROUP == sink.DEFAULT_GROUP
    worker = importlib.import_module("pipeline.runners.kafka")
    assert acl.WORKER_GROUP == worker.DEFAULT_GROUP
    assert worker.transactional_id(acl.WORKER_GROUP, "cdr.raw", "cdrpipe-worker-0") \
        .startswith(acl.WORKER_TRANSACTIONAL_ID_PREFIX)
    for app_id in (acl.PRIVACY_APP_ID, acl.AGGREGATES_APP_ID):  # faust ids start with the app id
        assert not f"{app_id}-{app_id}-0".startswith(acl.WORKER_TRANSACTIONAL_ID_PREFIX)


def test_acls_show_json_lists_exactly_the_bindings(capsys: pytest.CaptureFixture[str]) -> None:
    """`cdrpipe acls show --format json` prints the rows `acls apply` would create."""
    assert cli.main(["acls", "show", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    shown = {Binding(r["principal"], ResourceKind(r["resource_type"]), r["name"],
                     Pattern(r["pattern_type"]), Operation(r["operation"])) for r in rows}
    assert shown == set(bindings(MATRIX))


def test_acls_show_prefix_and_principal_rename(capsys: pytest.CaptureFixture[str]) -> None:
    """--prefix moves every topic grant; --principal renames a role's user, not its grants."""
    assert cli.main(["acls", "show", "--format", "json", "--prefix", "stg.",
                     "--principal", "analytics=bi-team"]) == 0
    rows = json.loads(capsys.readouterr().out)
    topics = {r["name"] for r in rows if r["resource_type"] == "topic"}
    assert all(t.startswith("stg.") for t in topics) and "stg.cdr.raw" in topics
    bi = {(r["name"], r["operation"]) for r in rows if r["principal"] == "User:bi-team"}
    assert bi == {("stg.cdr.analytics", "Read"), ("stg.cdr.aggregates", "Read"),
                  ("analytics-", "Read")}
    assert not any(r["principal"] == "User:analytics" for r in rows)


# --------------------------------------------------------------------------- generated k8s


def test_k8s_generated_files_are_fresh() -> None:
    """The generated files are exactly what deploy/render.py writes now (no edits, nothing stale)."""
    files = render.render()
    assert set(files) == {"base/kafka-topics.yaml", "base/kafka-users.yaml", "base/monitoring.yaml",
                          "vault-postgres/grants.yaml"}
    for name, text in files.items():
        assert (K8S / name).read_text() == text, f"{name} is stale: run python deploy/render.py"
    assert render.main(["--check"]) == 0


def test_generated_files_are_valid_yaml_of_the_same_resources(yaml: ModuleType) -> None:
    """PyYAML writes them: strings stay strings, multi-line texts come back exactly."""
    (grants,) = _docs(yaml, "grants.yaml", OVERLAY)
    assert grants["data"] == {n: (DEPLOY / "postgres" / n).read_text() for n in render.GRANTS}
    for doc in _docs(yaml, "kafka-users.yaml"):
        assert all(isinstance(v, str) for v in doc["metadata"]["annotations"].values())
    assert not re.search(r"[&*]id\d", (BASE / "kafka-users.yaml").read_text())  # no YAML anchors or aliases


def test_kafka_topics_equal_the_topic_policy(yaml: ModuleType) -> None:
    """Every KafkaTopic is a policy topic with its partitions, replicas and configs, and vice versa."""
    topics = {}
    for doc in _docs(yaml, "kafka-topics.yaml"):
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2" and doc["kind"] == "KafkaTopic"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == render.CLUSTER
        spec = doc["spec"]
        topics[spec["topicName"]] = (spec["partitions"], spec["replicas"],
                                     {k: str(v) for k, v in spec["config"].items()})
    assert topics == {name: (s.partitions, s.replication_factor, s.config)
                      for name, s in POLICY.items()}


def _strimzi_rows(doc: dict[str, Any]) -> set[Binding]:
    """The Kafka ACL rows a KafkaUser's ``simple`` authorization stands for."""
    principal = f"User:{doc['metadata']['name']}"
    rows = set()
    for rule in doc["spec"]["authorization"]["acls"]:
        assert rule.get("type", "allow") == "allow" and rule["host"] == "*"
        res = rule["resource"]
        for op in rule["operations"]:
            rows.add(Binding(principal, ResourceKind(res["type"]), res["name"],
                             Pattern(res["patternType"]), Operation(op)))
    return rows


def test_kafka_users_equal_the_acl_matrix(yaml: ModuleType) -> None:
    """One KafkaUser per principal, SCRAM-SHA-512, simple authorization, exactly the matrix's ACLs."""
    users = _docs(yaml, "kafka-users.yaml")
    assert sorted(d["metadata"]["name"] for d in users) == sorted(p.user for p in MATRIX)
    rows: set[Binding] = set()
    for doc in users:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2" and doc["kind"] == "KafkaUser"
        assert doc["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert doc["spec"]["authorization"]["type"] == "simple"
        rows |= _strimzi_rows(doc)
    assert rows == set(bindings(MATRIX))


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment, StatefulSet or CronJob (empty for other kinds)."""
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]["containers"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return []


def _secret_refs(container: dict[str, Any]) -> set[str]:
    """Names of the Secrets a container's environment reads."""
    return {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_pods_hold_only_their_own_secrets(yaml: ModuleType) -> None:
    """Worker-side pods never get the vault keyring; the vault never gets the worker keyring;
    each pod authenticates to Kafka as its own matrix user, with that user's Secret."""
    users = {p.user for p in MATRIX}
    seen = set()
    for doc in _all_docs(yaml):
        for c in _containers(doc):
            env = {e["name"]: e for e in c.get("env", [])}
            secrets = _secret_refs(c)
            vault_side = doc["metadata"]["name"].startswith("cdrpipe-vault")
            if vault_side:
                assert ENV_WORKER_KEYRING_JSON not in env and "cdrpipe-worker-keyring" not in secrets
            else:
                assert ENV_VAULT_KEYRING_JSON not in env and "cdrpipe-vault-keyring" not in secrets
            kafka_users = secrets & users
            # The purge talks to Kafka only to write its audit entry to the witness topic, as the vault.
            username = (env.get("CDRPIPE_X_SASL_USERNAME") or env["KAFKA_SASL_USERNAME"])["value"]
            assert kafka_users == {username}
            seen.add(username)
    assert seen == {"cdrpipe-worker", "cdrpipe-vault", "cdrpipe-privacy", "cdrpipe-aggregates"}


def test_worker_replicas_never_exceed_the_partitions_of_cdr_raw(yaml: ModuleType) -> None:
    """More workers than cdr.raw partitions would sit idle (replicas: the base's kustomization.yaml)."""
    (sts,) = [d for d in _docs(yaml, "worker.yaml") if d["kind"] == "StatefulSet"]
    partitions = POLICY["cdr.raw"].partitions
    assert 1 <= sts["spec"]["replicas"] <= partitions
    assert sts["metadata"]["annotations"]["cdrpipe/max-replicas"] == str(partitions)


def test_images_and_replicas_are_kustomize_fields(yaml: ModuleType) -> None:
    """Workload files name the bare image and no replica count; both kustomizations set the same tag."""
    counts = {r["name"]: r["count"] for r in yaml.safe_load((BASE / "kustomization.yaml").read_text())["replicas"]}
    for where in (BASE, OVERLAY):
        kust = yaml.safe_load((where / "kustomization.yaml").read_text())
        assert kust["images"] == [{"name": "cdrpipe", "newTag": "0.1.0"}], where
        for path in where.glob("*.yaml"):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc["kind"] in ("Deployment", "StatefulSet"):
                    assert "replicas" not in doc["spec"], f"{path.name}: set replicas in kustomization.yaml"
                    counts.pop(doc["metadata"]["name"], None)
                for c in _containers(doc) if doc else ():
                    assert "cdrpipe:" not in c["image"], f"{path.name}: the tag belongs in kustomization.yaml"
    assert not counts, f"replicas for workloads that do not exist: {sorted(counts)}"


def _kustomize() -> list[str] | None:
    """A kustomize build command on this machine (kustomize, or kubectl's built-in), or None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return ["kubectl", "kustomize"] if shutil.which("kubectl") else None


@pytest.mark.parametrize("where", [K8S, OVERLAY], ids=["base", "vault-postgres"])
def test_kustomize_builds_what_these_tests_check(yaml: ModuleType, where: Path) -> None:
    """`kubectl apply -k` on either entry point gets the resources checked here, namespaced."""
    command = _kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    built = subprocess.run([*command, str(where)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout) if d}
    assert all(d["metadata"]["namespace"] == "cdrpipe" for d in docs.values())
    expected = {(d["kind"], d["metadata"]["name"]): d for d in _all_docs(yaml)}
    if where == OVERLAY:
        for patch in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["patches"]:
            gone = yaml.safe_load(patch["patch"])
            del expected[(gone["kind"], gone["metadata"]["name"])]
        for name in ("vault.yaml", "grants.yaml"):
            expected.update({(d["kind"], d["metadata"]["name"]): d for d in _docs(yaml, name, OVERLAY)})
    assert set(docs) == set(expected)
    for key, doc in expected.items():
        assert {k: v for k, v in docs[key]["metadata"].items() if k != "namespace"} == doc["metadata"], key
        assert docs[key].get("spec", docs[key].get("data")) == doc.get("spec", doc.get("data")), key


def test_workloads_are_scraped_probed_and_locked_down(yaml: ModuleType) -> None:
    """Long-running apps expose metrics to Prometheus; every pod runs as non-root, read-only."""
    for doc in _all_docs(yaml):
        for c in _containers(doc):
            pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] \
                if doc["kind"] == "CronJob" else doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "memory" in c["resources"]["requests"]
            if any(p.get("name") == "metrics" for p in c.get("ports", [])):
                annotations = doc["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true"
                assert c["livenessProbe"]["httpGet"]["path"] == "/metrics"
                assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
                assert annotations["prometheus.io/port"] == str(c["ports"][0]["containerPort"])


def test_vault_purge_is_scheduled_at_least_monthly(yaml: ModuleType) -> None:
    """A CronJob runs `vault purge` on the sink's volumes, daily or monthly, never concurrently."""
    (job,) = [d for d in _docs(yaml, "vault.yaml") if d["kind"] == "CronJob"]
    minute, hour, dom, month, dow = job["spec"]["schedule"].split()
    assert month == "*" and dow == "*" and (dom == "*" or dom.isdigit())
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = _containers(job)
    assert c["args"][:2] == ["vault", "purge"]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (sink,) = [d for d in _docs(yaml, "vault.yaml") if d["kind"] == "StatefulSet"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    sink_claims = {v["persistentVolumeClaim"]["claimName"]
                   for v in sink["spec"]["template"]["spec"]["volumes"]
                   if "persistentVolumeClaim" in v}
    assert claims == sink_claims == {"cdrpipe-vault-data", "cdrpipe-vault-keys"}


def _witnessed_purges(yaml: ModuleType) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(where, args, env) of every `vault purge` deployed: the k8s base and overlay CronJobs, the compose services."""
    out = []
    for where, docs in (("base", _docs(yaml, "vault.yaml")), ("vault-postgres", _docs(yaml, "vault.yaml", OVERLAY))):
        for doc in docs:
            for c in _containers(doc):
                if c["args"][:2] == ["vault", "purge"]:
                    out.append((f"{where} {doc['metadata']['name']}", c["args"], {e["name"]: e for e in c["env"]}))
    for name, svc in yaml.safe_load(COMPOSE.read_text())["services"].items():
        if svc.get("command", [])[:2] == ["vault", "purge"]:
            out.append((f"compose {name}", svc["command"], {k: {"value": str(v)} for k, v in svc["environment"].items()}))
    return out


def test_every_deployed_purge_writes_its_audit_entry_to_the_kafka_witness(
        yaml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The purge (the deployed command that writes audit entries; `vault sink` writes none) runs with
    --witness kafka:vault.audit, a topic of the policy that its Kafka principal may Write, with Kafka
    reachable; in k8s it authenticates as cdrpipe-vault with that user's Secret and the cluster CA."""
    from pipeline.vault.witness import KafkaWitness, open_witness
    purges = _witnessed_purges(yaml)
    assert {w.split()[0] for w, _a, _e in purges} == {"base", "vault-postgres", "compose"}
    assert len(purges) == 4
    assert "vault.audit" in POLICY
    vault = next(p for p in MATRIX if p.role == "vault")
    assert Operation.WRITE in topic_access(MATRIX, ["vault.audit"])["vault"]["vault.audit"]
    for where, args, env in purges:
        assert args[args.index("--witness") + 1] == "kafka:vault.audit", where
        assert env["CDRPIPE_BOOTSTRAP_SERVERS"]["value"], where
        if not where.startswith("compose"):  # compose's Kafka has no authentication (see its header)
            assert env["CDRPIPE_X_SASL_USERNAME"]["value"] == vault.user, where
            assert env["CDRPIPE_X_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == vault.user, where
            assert env["CDRPIPE_X_SSL_CA_LOCATION"]["value"] == "/etc/kafka-ca/ca.crt", where
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value.get("value", "from-secret"))
            parsed = cli.build_parser().parse_args(args)
            witness = open_witness(parsed.witness, dict(x.split("=", 1) for x in parsed.X or []))
        assert isinstance(witness, KafkaWitness) and witness.topic == "vault.audit", where


def test_kustomization_lists_every_manifest(yaml: ModuleType) -> None:
    """`kubectl apply -k deploy/k8s` applies every file of the base."""
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kust["resources"]) == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"] == ["base"]


# --------------------------------------------------------------------------- commands


def _k8s_invocations(yaml: ModuleType) -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, args, env) of every container; secret env values become placeholders."""
    out = []
    for doc in _all_docs(yaml):
        for c in _containers(doc):
            env = {e["name"]: e.get("value", "from-secret") for e in c.get("env", [])}
            args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
            out.append((f"k8s {doc['kind']}/{doc['metadata']['name']}", args, env))
    return out


def _compose_invocations(yaml: ModuleType) -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, command, env) of every compose service that runs the cdrpipe image."""
    doc = yaml.safe_load(COMPOSE.read_text())
    out = []
    for name, svc in doc["services"].items():
        if "cdrpipe" not in svc.get("image", ""):
            continue
        cmd = svc["command"]
        out.append((f"compose {name}", shlex.split(cmd) if isinstance(cmd, str) else cmd,
                    {k: str(v) for k, v in (svc.get("environment") or {}).items()}))
    return out


def _registered_commands() -> set[str]:
    """Top-level `cdrpipe` commands that exist in this checkout."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_every_container_command_is_one_cdrpipe_accepts(
        yaml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each k8s container and compose service parses with the real CLI, with its environment."""
    invocations = _k8s_invocations(yaml) + _compose_invocations(yaml)
    assert len(invocations) >= 8
    registered = _registered_commands()
    pending = []
    for where, args, env in invocations:
        if args[0] not in registered:
            pending.append(f"{where}: cdrpipe {args[0]}")
            continue
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            try:
                parsed = cli.build_parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"{where}: `cdrpipe {' '.join(args)}` does not parse")
            assert callable(getattr(parsed, "func", None)), where
    assert {"run", "vault", "topics"} <= registered, "core commands missing"
    supported = set(SUPPORTED_X)  # the faust apps accept only some -X keys (aiokafka is not librdkafka)
    for where, args, _env in invocations:
        if args[0] in ("privacy", "aggregates"):
            keys = {args[i + 1].split("=", 1)[0] for i, a in enumerate(args) if a == "-X"}
            assert keys <= supported, f"{where}: -X {sorted(keys - supported)} not supported"
    assert not pending, "commands cdrpipe does not have: " + "; ".join(pending)


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose(yaml: ModuleType) -> dict[str, Any]:
    """deploy/compose.yaml, parsed (merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_the_pinned_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    """The broker is apache/kafka at the version the tests use, KRaft combined, no auto-create."""
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "healthcheck" in kafka


def test_compose_names_the_policy_topics_and_commands(compose: dict[str, Any]) -> None:
    """Topics come from `topics apply`; every topic a service names is a policy topic."""
    services = compose["services"]
    assert services["topics"]["command"][:2] == ["topics", "apply"]
    assert services["worker"]["command"][0] == "run"
    assert services["vault-sink"]["command"][:2] == ["vault", "sink"]
    assert services["vault-purge"]["command"][:2] == ["vault", "purge"]
    named = {v for svc in services.values() for k, v in (svc.get("environment") or {}).items()
             if k.endswith("_TOPIC")}
    assert named <= set(POLICY)
    worker_env = services["worker"]["environment"]
    assert (worker_env["CDRPIPE_INPUT_TOPIC"], worker_env["CDRPIPE_ANALYTICS_TOPIC"],
            worker_env["CDRPIPE_RETENTION_TOPIC"], worker_env["CDRPIPE_DLQ_TOPIC"]) \
        == ("cdr.raw", "cdr.analytics", "cdr.retention", "cdr.dlq")
    assert services["vault-sink"]["environment"]["CDRPIPE_VAULT_TOPIC"] == "cdr.retention"
    assert services["vault-sink"]["environment"]["CDRPIPE_VAULT_GROUP"] == acl.VAULT_GROUP
    for name in ("topics", "worker", "vault-sink", "privacy", "aggregates"):
        assert services[name]["depends_on"], name


def test_compose_mounts_each_keyring_only_where_it_belongs(compose: dict[str, Any]) -> None:
    """Keys are compose secrets; the worker side never sees the vault keyring, nor vice versa."""
    services = compose["services"]
    assert set(compose["secrets"]) == {"worker-keyring", "vault-keyring"}
    for name, svc in services.items():
        held = set(svc.get("secrets", []))
        if name.startswith("vault"):
            assert held == {"vault-keyring"}, name
        else:
            assert "vault-keyring" not in held, name
        env = svc.get("environment") or {}
        assert not any("KEYRING_JSON" in k for k in env), f"{name}: keys belong in secrets"
    assert services["worker"]["secrets"] == ["worker-keyring"]
    assert services["worker"]["environment"]["CDRPIPE_KEYRING"] == "/run/secrets/worker-keyring"
    assert services["vault-sink"]["environment"]["CDRPIPE_VAULT_KEYRING"] \
        == "/run/secrets/vault-keyring"


def test_compose_apps_run_read_only_with_health_checks(compose: dict[str, Any]) -> None:
    """Every cdrpipe service is locked down; the long-running ones with metrics are health-checked."""
    for name, svc in compose["services"].items():
        if "cdrpipe" not in svc.get("image", ""):
            continue
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        if "9100" in " ".join(svc["command"]):
            assert "127.0.0.1:9100/" in " ".join(svc["healthcheck"]["test"]), name


def test_dockerfile_is_slim_non_root_and_enters_cdrpipe() -> None:
    """One image for every command: python:3.11 slim base, a numeric non-root user, cdrpipe entry."""
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    assert re.findall(r"^USER (\S+)$", text, re.M) == ["10001:10001"]
    assert re.search(r'^ENTRYPOINT \["cdrpipe"\]$', text, re.M)
    last_stage = text.rsplit("\nFROM ", 1)[1]
    assert "build-essential" not in last_stage  # compilers stay in the build stage
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"  # deny by default: no keys


# --------------------------------------------------------------------------- the vault on PostgreSQL

#: The overlay's CloudNativePG clusters (records; keystore) and the vault's database roles.
PG_RECORDS, PG_KEYS = "cdrpipe-vault-pg", "cdrpipe-vault-keys-pg"
PG_ROLES = ("ingest", "officer", "auditor", "purge")


def test_vault_postgres_overlay_replaces_the_sqlite_vault(yaml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/k8s/vault-postgres/ swaps the SQLite vault for CloudNativePG clusters, several sinks, and a
    purge, each pod connecting as its own least-privilege role."""
    assert {p.name for p in OVERLAY.glob("*.yaml")} == {"kustomization.yaml", "vault.yaml", "grants.yaml"}
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../base", "vault.yaml", "grants.yaml"]
    deleted = {(p["kind"], p["metadata"]["name"]) for p in (yaml.safe_load(x["patch"]) for x in kust["patches"])
               if p.get("$patch") == "delete"}
    base_vault = {(d["kind"], d["metadata"]["name"]) for d in _docs(yaml, "vault.yaml")}
    assert deleted == base_vault  # nothing of the SQLite vault is left running beside the new one
    docs = _docs(yaml, "vault.yaml", OVERLAY) + _docs(yaml, "grants.yaml", OVERLAY)
    clusters = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Cluster"}
    assert set(clusters) == {PG_RECORDS, PG_KEYS}  # the keystore is backed up apart
    for cluster in clusters.values():
        assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["spec"]["instances"] >= 3
        roles = {r["name"] for r in cluster["spec"]["managed"]["roles"]}
        assert roles == {f"cdrpipe_{r}" for r in PG_ROLES}
        assert not any(r["superuser"] for r in cluster["spec"]["managed"]["roles"])
    (sink,) = [d for d in docs if d["kind"] == "Deployment"]
    assert sink["spec"]["replicas"] >= 2
    role_of = {}
    for doc in docs:
        for c in _containers(doc):
            env = {e["name"]: e for e in c.get("env", [])}
            if "CDRPIPE_VAULT_DB" in env:
                db, keys = env["CDRPIPE_VAULT_DB"]["value"], env["CDRPIPE_VAULT_KEYSTORE"]["value"]
                assert "sslmode=verify-full" in db and "sslmode=verify-full" in keys
                assert db.split("//")[1].split("@")[0] == keys.split("//")[1].split("@")[0]  # one role each
                assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
                    "cdrpipe-pg-" + db.split("//cdrpipe_")[1].split("@")[0]
                role_of[c["args"][1]] = db.split("//")[1].split("@")[0]
                pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] \
                    if doc["kind"] == "CronJob" else doc["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                with monkeypatch.context() as m:
                    for key, value in env.items():
                        m.setenv(key, value.get("value", "from-secret"))
                    argv = [re.sub(r"\$\((\w+)\)", lambda x: env[x.group(1)].get("value", "s"), a) for a in c["args"]]
                    assert callable(cli.build_parser().parse_args(argv).func)
    assert role_of == {"sink": "cdrpipe_ingest", "purge": "cdrpipe_purge"}
    (grants,) = [d for d in docs if d["kind"] == "ConfigMap"]
    for name, text in grants["data"].items():
        assert text == (DEPLOY / "postgres" / name).read_text()
