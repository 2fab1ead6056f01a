"""deploy/k8s/: `make k8s-check` (scripts/k8s-check.sh: kustomize, then kubeconform -strict against the vendored
schemas) passes on the shipped manifests and fails, naming the field, on a copy with a typo; the manifests say what
config/router.toml says (lag threshold, grace period, group, topic, provider keys)."""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worker.config import CONFIG_ENV, load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CHECK = ROOT / "scripts" / "k8s-check.sh"
CONFIG = load_config(ROOT / "config" / "router.toml", env={})
# The kafka trigger's parameters in KEDA 2.20 (pkg/scalers/kafka_scaler.go): a misspelt one is no schema error
# (trigger metadata is a map of strings) but would be ignored by KEDA.
KAFKA_TRIGGER_PARAMETERS = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic", "topicFromEnv",
    "partitionLimitation", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}  # fmt: skip


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900
    )


@pytest.fixture(scope="module")
def tools():
    """kustomize and kubeconform in .tools/, built from the Go module proxy the first time."""
    result = run_check("--install")
    if result.returncode != 0:
        pytest.fail(f"kustomize and kubeconform could not be installed:\n{result.stderr}", pytrace=False)


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def worker_container() -> dict:
    return manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def kafka_literals() -> dict[str, str]:
    generators = manifest("kustomization.yaml")["configMapGenerator"]
    literals = next(g["literals"] for g in generators if g["name"] == "llm-router-kafka")
    return dict(literal.split("=", 1) for literal in literals)


def test_shipped_manifests_pass(tools):
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for resource in (
        "Deployment llm-router-worker",
        "PodDisruptionBudget llm-router-worker",
        "Job llm-router-topics",
        "ScaledObject llm-router-worker",
        "ConfigMap llm-router-config-",
        "ConfigMap llm-router-kafka-",
        "Secret llm-router-provider-keys",
    ):
        assert [line for line in result.stdout.splitlines() if resource in line and line.endswith("is valid")], (
            resource,
            result.stdout,
        )
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


TYPOS = {
    "replica": (
        "deployment.yaml",
        "  selector:\n",
        "  replica: 2\n  selector:\n",
        ["Deployment llm-router-worker is invalid", "at '/spec': additional properties 'replica' not allowed"],
    ),
    "probe_field": (
        "deployment.yaml",
        "            periodSeconds: 10\n",
        "            periodSecond: 10\n",
        [
            "Deployment llm-router-worker is invalid",
            "at '/spec/template/spec/containers/0/livenessProbe': additional properties 'periodSecond' not allowed",
        ],
    ),
    "scaledobject_field": (
        "scaledobject.yaml",
        "  maxReplicaCount: 12\n",
        "  maxReplicas: 12\n",
        ["ScaledObject llm-router-worker is invalid", "at '/spec': additional properties 'maxReplicas' not allowed"],
    ),
    "trigger_value_type": (
        "scaledobject.yaml",
        'lagThreshold: "4096"',
        "lagThreshold: 4096",
        ["ScaledObject llm-router-worker is invalid", "at '/spec/triggers/0/metadata/lagThreshold': got number"],
    ),
    "pdb_field": (
        "pdb.yaml",
        "  maxUnavailable: 1\n",
        "  maxUnavailabe: 1\n",
        ["PodDisruptionBudget llm-router-worker is invalid", "'maxUnavailabe' not allowed"],
    ),
}


@pytest.mark.parametrize("case", TYPOS)
def test_typo_fails_naming_it(tools, tmp_path, case):
    file, old, new, said = TYPOS[case]
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("schemas"))
    text = (copy / file).read_text()
    assert text.count(old) == 1, f"{file} no longer has {old!r} once"
    (copy / file).write_text(text.replace(old, new))
    result = run_check(str(copy))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for fragment in said:
        assert fragment in output, output
    assert f"{copy}: invalid manifests" in result.stderr


def test_config_copy_must_match_config(tools, tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("schemas"))
    with (copy / "router.toml").open("a") as toml:
        toml.write("\n# edited here only\n")
    result = run_check(str(copy))
    assert result.returncode != 0
    assert f"{copy}/router.toml differs from config/router.toml" in result.stderr, result.stderr


def test_tools_that_cannot_be_installed_fail_clearly(tmp_path):
    """No module proxy and an empty module cache: the check stops at once, saying what it could not install."""
    result = run_check(
        env={"K8S_TOOLS_DIR": str(tmp_path / "tools"), "GOPROXY": "off", "GOMODCACHE": str(tmp_path / "mod")}
    )
    assert result.returncode != 0
    assert "k8s-check: could not install kustomize v5.8.1" in result.stderr, result.stderr
    assert "GOPROXY" not in result.stdout


def test_vendored_schemas_are_the_generated_ones(tmp_path):
    """deploy/k8s/schemas is what scripts/k8s-schemas.py writes from the pinned Kubernetes and KEDA modules."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s-schemas.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"the schemas could not be generated:\n{result.stderr}"
    vendored = sorted(p.relative_to(K8S / "schemas") for p in (K8S / "schemas").rglob("*.json"))
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert vendored == generated
    _, mismatch, errors = filecmp.cmpfiles(K8S / "schemas", tmp_path, [str(p) for p in vendored], shallow=False)
    assert (mismatch, errors) == ([], []), "deploy/k8s/schemas drifted: run `make k8s-schemas`"


def test_lag_threshold_is_max_in_flight_and_replicas_at_most_the_partitions():
    scaled = manifest("scaledobject.yaml")["spec"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["lagThreshold"] == str(CONFIG.worker.max_in_flight)
    args = manifest("topics-job.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["topics", "create"]
    partitions = int(args[args.index("--partitions") + 1])
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    assert set(trigger["metadata"]) <= KAFKA_TRIGGER_PARAMETERS


def test_scaler_reads_the_workers_group_and_topic():
    """The ScaledObject's *FromEnv variables are the worker's (envFrom the same ConfigMap), and they hold
    config/router.toml's group and jobs topic, as overrides the worker takes."""
    metadata = manifest("scaledobject.yaml")["spec"]["triggers"][0]["metadata"]
    literals = kafka_literals()
    assert [source["configMapRef"]["name"] for source in worker_container()["envFrom"]] == ["llm-router-kafka"]
    for key in ("bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv"):
        assert metadata[key] in literals
    overridden = load_config(ROOT / "config" / "router.toml", env=literals)
    assert overridden.kafka.group_id == CONFIG.kafka.group_id == literals[metadata["consumerGroupFromEnv"]]
    assert overridden.kafka.topics.jobs == CONFIG.kafka.topics.jobs == literals[metadata["topicFromEnv"]]
    assert overridden.kafka.bootstrap_servers == literals[metadata["bootstrapServersFromEnv"]]


def test_deployment_grace_probes_config_and_keys():
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    container = worker_container()
    # Above the drain, with room for the telemetry's 5 s and the commit and leave.
    assert pod["terminationGracePeriodSeconds"] > CONFIG.worker.shutdown_grace_s + 5
    assert container["command"] + container["args"] == ["llm-router", "worker"]
    env = {item["name"]: item for item in container["env"]}
    assert container["ports"] == [{"name": "http", "containerPort": int(env["LLM_ROUTER__WORKER__HTTP_PORT"]["value"])}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    (mount,) = container["volumeMounts"]
    assert env[CONFIG_ENV]["value"] == f"{mount['mountPath']}/router.toml"
    keys = {p.api_key_env for p in CONFIG.providers.values() if p.api_key_env}
    refs = {name: item["valueFrom"]["secretKeyRef"] for name, item in env.items() if "valueFrom" in item}
    assert set(refs) == keys
    assert {ref["name"] for ref in refs.values()} == {"llm-router-provider-keys"}
    assert all(ref["key"] == name for name, ref in refs.items())
    example = yaml.safe_load((K8S / "examples" / "provider-keys-secret.yaml").read_text())
    assert example["metadata"]["name"] == "llm-router-provider-keys"
    assert set(example["stringData"]) == keys
    assert all(value.startswith("REPLACE-ME") for value in example["stringData"].values())
