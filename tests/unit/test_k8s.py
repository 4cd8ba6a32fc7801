"""deploy/k8s: every manifest is valid against the Kubernetes schemas (kubernetes-validate, strict, with
the schemas it ships), both overlays render with kustomize (kubectl's, where installed), and ports,
probes, env names, grace periods and the autoscaling metric agree with the settings and the app."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import ENV_PREFIX, Settings, load_settings
from app.main import create_app
from tests.support.http import ok
from tests.support.paths import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the oldest version the manifests must work on (native preStop sleep)
# Kinds whose schema is a CRD's (not in Kubernetes' own): checked field by field below instead.
CRD_KINDS = {"ServiceMonitor"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources() -> list[tuple[str, dict[str, Any]]]:
    """Every full resource in the base (overlay patches are partial by design)."""
    found = []
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") != "Kustomization":
                found.append((path.name, doc))
    return found


def rendered(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed here")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


@pytest.mark.parametrize(("name", "doc"), resources(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_k8s_base_manifests_validate_strictly(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        pytest.skip(f"{doc['kind']} is a CRD: checked by test_k8s_servicemonitor_scrapes_metrics")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_overlays_render_and_validate(overlay: str) -> None:
    docs = rendered(overlay)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "ServiceMonitor",
    }
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    c = container(of_kind(docs, "Deployment"))
    gpus = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpus == "1" and env_of(c)["UPSCALER_DEVICE"] == "cuda" and c["image"].endswith(":cuda")
        assert len([e for e in c["env"] if e["name"] == "UPSCALER_DEVICE"]) == 1
    else:
        assert gpus is None and env_of(c)["UPSCALER_DEVICE"] == "cpu"
    assert set(env_of(c)) >= {"UPSCALER_HOST", "UPSCALER_PORT", "UPSCALER_WEIGHTS_DIR"}


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for _, doc in resources()}


def test_k8s_env_names_are_settings_and_values_validate(base: dict[str, dict[str, Any]]) -> None:
    c = container(base["Deployment"])
    names = [e["name"] for e in c["env"] if e["name"].startswith(ENV_PREFIX)]
    unknown = [n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields]
    assert names and not unknown, unknown
    settings = load_settings({k: v for k, v in env_of(c).items() if k.startswith(ENV_PREFIX)})
    assert not settings.loopback_only, "inside a pod the service must listen beyond loopback"
    secret = next(e for e in c["env"] if e["name"] == "UPSCALER_API_KEY")["valueFrom"]["secretKeyRef"]
    assert secret["optional"] is True  # no Secret: an open service, as without the variable


def test_k8s_ports_and_probes_agree_with_the_app(base: dict[str, dict[str, Any]]) -> None:
    c = container(base["Deployment"])
    settings = load_settings({k: v for k, v in env_of(c).items() if k.startswith(ENV_PREFIX)})
    (port,) = c["ports"]
    assert port["containerPort"] == settings.port == Settings.model_fields["port"].default
    schema = create_app(load_settings({})).openapi()
    gets = {path for path, item in schema["paths"].items() if "get" in item}
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/ready"
    assert all(p["path"] in gets and p["port"] == port["name"] for p in probes.values())
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading needs minutes"
    (svc_port,) = base["Service"]["spec"]["ports"]
    assert svc_port["targetPort"] == port["name"]


def test_k8s_grace_period_outlasts_the_drain(base: dict[str, dict[str, Any]]) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    c = container(base["Deployment"])
    grace = load_settings({k: v for k, v in env_of(c).items() if k.startswith(ENV_PREFIX)}).shutdown_grace_s
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pause


def test_k8s_runs_non_root_read_only_with_weights_from_a_volume(base: dict[str, dict[str, Any]]) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    c = container(base["Deployment"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    weights_dir = env_of(c)["UPSCALER_WEIGHTS_DIR"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == weights_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert volume["persistentVolumeClaim"]["claimName"] == base["PersistentVolumeClaim"]["metadata"]["name"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def test_k8s_selectors_match_the_pods(base: dict[str, dict[str, Any]]) -> None:
    labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        base["Deployment"]["spec"]["selector"]["matchLabels"],
        base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        base["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()
    assert (
        base["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == base["Deployment"]["metadata"]["name"]
    )


def test_k8s_autoscaling_metric_is_one_the_service_exports(
    base: dict[str, dict[str, Any]], client: Any
) -> None:
    (metric,) = base["HorizontalPodAutoscaler"]["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    client.get("/health")  # the device queue exists once the app has started
    assert f"\n{name}{{" in ok(client.get("/metrics")).text
    rules = documents(K8S / "prometheus-adapter-rules.yaml")[0]["rules"]["custom"]
    assert any(r["name"]["as"] == name and name in r["seriesQuery"] for r in rules)


def test_k8s_servicemonitor_scrapes_metrics(base: dict[str, dict[str, Any]]) -> None:
    monitor = base["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == base["Service"]["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    # kustomize's `labels` put app.kubernetes.io/name on the Service the monitor selects.
    kustomization = documents(K8S / "base" / "kustomization.yaml")[0]
    common = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= common.items()
