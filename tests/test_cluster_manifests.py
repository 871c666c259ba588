"""Offline validation of the Kubernetes deployment in cluster/ (no cluster, no network, no nakt_ray import).

What is checked, and against what:

- RayCluster / RayJob: the ``openAPIV3Schema`` of KubeRay's CRDs in ``../shared/schemas/kuberay`` (jsonschema),
  made strict the way the API server's field validation is (an unknown field is an error, ``nullable`` honoured);
  the checks of KubeRay's controller that a CRD schema cannot express (names, token auth needs Ray >= 2.52, TTL only
  with shutdown, ...); and every pod template inside them against the pinned Kubernetes schemas.
- Built-in kinds (Namespace, ServiceAccount, PVC, ConfigMap, Deployment, Service, ...): the strict schemas that
  ``kubernetes-validate`` ships for ``K8S_VERSIONS`` (read from the installed package; the module blocks sockets,
  so a download attempt would fail the tests).
- Cross-references: job entrypoints exist in jobs/ or are in ``PLANNED_ENTRYPOINTS``; the config file a job names
  is a key of the ConfigMap mounted there; the GPU group asks for ``nvidia.com/gpu`` in its limits; autoscaling is
  on with 0 <= minReplicas <= replicas <= maxReplicas <= ``MAX_WORKERS_PER_GROUP``; one runtime image everywhere,
  the one ``cluster/values`` names, at the Ray version of constraints.txt; MLFLOW_TRACKING_URI names the MLflow
  Service and passes the server's allowed-hosts list; referenced ConfigMaps/PVCs/ServiceAccounts exist; Secrets are
  the documented hand-made ones (``HAND_MADE_SECRETS``); Services select pods that have the target ports.
- kustomize: every manifest belongs to one kustomization; every value in cluster/values/values.yaml lands on a
  field of the plain manifests that holds the same default (so ``apply -f`` and ``apply -k`` agree). ``render``
  reproduces kustomize here, so objects changed by a deployment's own values go through all the checks above;
  where ``kubectl`` is installed, ``kubectl kustomize`` must render exactly the same objects.
- The Dockerfile and .dockerignore agree with constraints.txt (torch, torchvision, mlflow pins) and the manifests
  (working directory, image tags).
- Hardening (issue 18): no Service (nor Ray head Service) of type LoadBalancer/NodePort; no literal secret (env
  values, URIs with passwords, ConfigMaps, RayJob runtime env, $(VAR) of a Secret on a command line); every
  container (init containers, KubeRay's autoscaler sidecar, the RayJob submitter and the runbook's data loader
  included) non-root, no privilege escalation, capabilities dropped, a seccomp profile, and the service-account
  token only where it is used; MLflow's basic-auth app with credentials from Secrets and no password on its command
  line; NetworkPolicies evaluated rule by rule (``flow_allowed``) for every pair of workloads and a few outsiders.
- Negative cases: mutated copies of the manifests that each check must refuse.
"""
from __future__ import annotations

import configparser
import copy
import fnmatch
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY_SCHEMAS = Path(os.environ.get("NAKT_KUBERAY_SCHEMAS", ROOT.parent / "shared" / "schemas" / "kuberay"))

# Kubernetes versions the built-in kinds are validated against: the oldest we deploy to and the newest that the
# pinned kubernetes-validate knows. Both must be shipped by the installed kubernetes-validate.
K8S_VERSIONS = ("1.33.0", "1.37.0")
# One RayJob per stage, each running its jobs/ script.
STAGE_ENTRYPOINTS = frozenset({"jobs/annotate.py", "jobs/distil.py", "jobs/tune.py", "jobs/pipeline.py"})
# Job entrypoints that are planned but not written yet: none (every stage's script exists in jobs/ and is checked
# for real). A RayJob naming a script that neither exists nor is listed here fails.
PLANNED_ENTRYPOINTS: frozenset[str] = frozenset()
# Secrets the manifests reference but nobody commits: created with `kubectl create secret` (cluster/README.md).
HAND_MADE_SECRETS = frozenset({"mlflow-auth", "mlflow-db", "nakt-object-store", "nakt-ray-auth",
                               "nakt-teacher-credentials"})
MLFLOW_AUTH_SECRET = "mlflow-auth"     # the MLflow server's admin (also the jobs' MLflow user) and its Flask key
NAMESPACE = "nakt"
CPU_GROUP, GPU_GROUP = "cpu-workers", "gpu-workers"
MAX_WORKERS_PER_GROUP = 64          # "sensible bounds": a typo such as 400 GPU workers is refused
RUNTIME_IMAGE_NAME = "registry.example.com/nakt/nakt-ray"
MLFLOW_IMAGE_NAME = "registry.example.com/nakt/nakt-mlflow"
MAX_RAYCLUSTER_NAME, MAX_RAYJOB_NAME = 53, 47      # KubeRay's MaxRayClusterNameLength, MaxRayJobNameLength
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
VALUES_KIND = "NaktValues"
# Hardening (issue 18).
EXPOSED_SERVICE_TYPES = frozenset({"LoadBalancer", "NodePort"})
SECRET_NAME = re.compile(r"passw|secret|token|credential|api[_-]?key|private[_-]?key|access[_-]?key", re.I)
URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.I)
PASSWORD_LINE = re.compile(r"^\s*[\w.-]*(passw|secret|token)[\w.-]*\s*[=:]\s*\S", re.I)
POD_LEVEL_SECURITY = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile", "seLinuxOptions", "appArmorProfile")
RAY_ROLES = ("ray-head", "ray-cpu-worker", "ray-gpu-worker")     # app.kubernetes.io/component of Ray pods
SUBMITTER_ROLE = "ray-job-submitter"                            # the RayJob's submitter pod (K8sJobMode)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # the CRDs are 2.3 MB of YAML: 0.6 s with libyaml


# ----------------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(CLUSTER)}#{self.index}:{self.kind}/{self.name}"


@functools.lru_cache(maxsize=None)
def all_manifests() -> tuple[Manifest, ...]:
    """Every YAML document under cluster/ (multi-document files included), in path order."""
    out = []
    for path in sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")]):
        for i, doc in enumerate(yaml.load_all(path.read_text(), Loader=_LOADER)):
            if doc is not None:
                out.append(Manifest(path, i, doc))
    return tuple(out)


def kube_objects() -> list[Manifest]:
    """The documents that are sent to the API server (not kustomize files, not the values)."""
    return [m for m in all_manifests() if m.kind not in KUSTOMIZE_KINDS | {VALUES_KIND}]


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in kube_objects() if m.kind == kind]


def one(kind: str, name: str | None = None) -> Manifest:
    found = [m for m in of_kind(kind) if name is None or m.name == name]
    assert found, f"no {kind} {name or ''} under cluster/"
    return found[0]


def values_doc() -> dict:
    (m,) = [m for m in all_manifests() if m.kind == VALUES_KIND]
    return m.doc


@functools.lru_cache(maxsize=None)
def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def dockerfile_stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage (continuation lines joined), keyed by stage name."""
    text = (CLUSTER / "Dockerfile").read_text()
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if buf.strip():
                logical.append(buf.strip())
            buf = ""
    stages: dict[str, list[str]] = {"<global>": []}
    current = "<global>"
    for ins in logical:
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", ins, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        stages[current].append(ins)
    return stages


# ----------------------------------------------------------------------------------------------------------------
# Walking pod specs


def ray_cluster_specs(m: Manifest | dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) pairs of a RayCluster or a RayJob."""
    doc = m.doc if isinstance(m, Manifest) else m
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        return [("spec", spec)]
    if doc.get("kind") == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    return []


def ray_groups(spec: dict) -> Iterator[tuple[str, dict]]:
    """(group name, group) for the head ("head") and every worker group."""
    yield "head", spec.get("headGroupSpec") or {}
    for g in spec.get("workerGroupSpecs") or []:
        yield g.get("groupName", "<no groupName>"), g


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) of every pod a document creates."""
    for where, spec in ray_cluster_specs(doc):
        for group, g in ray_groups(spec):
            yield f"{where}/{group}", g.get("template") or {}
    if doc.get("kind") == "RayJob" and (doc.get("spec") or {}).get("submitterPodTemplate"):
        yield "spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        yield "spec.template", (doc.get("spec") or {}).get("template") or {}


def containers(template: dict) -> list[dict]:
    spec = template.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def ray_container(group: dict) -> dict:
    """KubeRay treats the first container of a group's pod as the Ray container."""
    cs = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return cs[0]


def env_value(container: dict, name: str) -> str | None:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def gpu_limit(container: dict) -> Any:
    return ((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")


def _steps(path: str | tuple[str, ...]) -> list[str]:
    """A kustomize fieldPath (a.b.[key=value].c) as steps; a tuple is taken as the steps themselves (for keys
    with dots, such as nvidia.com/gpu)."""
    return list(path) if isinstance(path, tuple) else re.findall(r"\[[^\]]*\]|[^.\[\]]+", path)


def _field(node: Any, path: str | tuple[str, ...]) -> Any:
    """Follow a fieldPath; KeyError / StopIteration when a step is missing."""
    for step in _steps(path):
        if step.startswith("["):
            key, value = step[1:-1].split("=", 1)
            if not isinstance(node, list):
                raise KeyError(step)
            node = next(item for item in node if str(item.get(key)) == value)
        else:
            node = node[int(step)] if isinstance(node, list) else node[step]
    return node


def _kustomizations() -> list[Manifest]:
    return [m for m in all_manifests() if m.kind in KUSTOMIZE_KINDS]


def _put(node: dict, path: str | tuple[str, ...], value: Any, create: bool) -> None:
    """Set a fieldPath (kustomize replacement semantics: missing maps are created only with ``create``)."""
    *parents, last = _steps(path)
    for step in parents:
        if not step.startswith("[") and not isinstance(node, list) and step not in node and create:
            node[step] = {}
        node = _field(node, (step,))
    node[int(last) if isinstance(node, list) else last] = value


def _split_image(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference; the tag is after the last ':' that follows the last '/'."""
    name, sep, tag = image.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (image, "")


def render(k: Manifest, values: dict | None = None) -> list[dict]:
    """What ``kubectl kustomize`` makes of kustomization ``k``: its resources with each component's replacements
    (values.yaml) and images applied, and the namespace set. Lets the checks run on the objects a deployment's own
    values produce, with or without kubectl; the kubectl test confirms that kustomize agrees."""
    folder = k.path.parent
    listed = {(folder / r).resolve() for r in k.doc.get("resources", [])}
    docs = [copy.deepcopy(m.doc) for m in kube_objects() if m.path.resolve() in listed]
    for component in k.doc.get("components", []):
        comp_file = (folder / component / "kustomization.yaml").resolve()
        (comp,) = [m for m in _kustomizations() if m.path.resolve() == comp_file]
        local = [m.doc for m in all_manifests() if m.path.resolve() in
                 {(comp.path.parent / r).resolve() for r in comp.doc.get("resources", [])}]
        for img in comp.doc.get("images", []):
            for doc in docs:
                for _, template in pod_templates(doc):
                    for c in containers(template):
                        name, tag = _split_image(c.get("image", ""))
                        if name == img["name"]:
                            c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
        for r in comp.doc.get("replacements", []):
            src = r["source"]
            (source,) = [d for d in local if d["kind"] == src["kind"] and d["metadata"]["name"] == src["name"]]
            value = _field(values if values is not None else source, src["fieldPath"])
            for target in r["targets"]:
                select = target["select"]
                for doc in docs:
                    name = doc["metadata"]["name"]
                    if doc["kind"] == select["kind"] and select.get("name", name) == name:
                        for path in target["fieldPaths"]:
                            _put(doc, path, copy.deepcopy(value), (target.get("options") or {}).get("create", False))
    if k.doc.get("namespace"):
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = k.doc["namespace"]
    return docs


@functools.lru_cache(maxsize=None)
def checked_objects() -> tuple[Manifest, ...]:
    """The plain manifests, plus every rendered object that differs from its plain manifest (cluster/values was
    changed for a deployment): the schema and rule checks run on both."""
    plain = {(m.kind, m.name): m.doc for m in kube_objects()}
    out = list(kube_objects())
    for k in _kustomizations():
        if k.kind == "Kustomization":
            for doc in render(k):
                if doc != plain.get((doc["kind"], doc["metadata"]["name"])):
                    out.append(Manifest(k.path, len(out), doc))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Validator 1: KubeRay CRD schemas (jsonschema)


def _strict(schema: Any) -> Any:
    """A CRD structural schema as JSON Schema with the API server's strictness: objects with declared properties
    refuse unknown fields (kubectl's default --validate=strict), and ``nullable: true`` admits null."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_strict(s) for s in value]
        else:
            out[key] = value
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def crds() -> tuple[dict, ...]:
    """The CustomResourceDefinitions in KUBERAY_SCHEMAS (read once: 2.3 MB of YAML)."""
    return tuple(crd for path in sorted(KUBERAY_SCHEMAS.glob("*.yaml"))
                 for crd in yaml.load_all(path.read_text(), Loader=_LOADER)
                 if crd and crd.get("kind") == "CustomResourceDefinition")


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict schema of every served version of every CRD."""
    return {(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"]):
            _strict(v["schema"]["openAPIV3Schema"])
            for crd in crds() for v in crd["spec"]["versions"] if v.get("served", True)}


@functools.lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    schema = crd_schemas().get((api_version, kind))
    # OpenAPI 3.0 schema objects are JSON Schema draft 4/5 in substance; the CRD schema is trusted, not meta-checked
    # (checking 1 MB of schema would cost more than all the validation).
    return None if schema is None else jsonschema.Draft4Validator(schema)


def _cel_rules_reached(instance: Any, schema: dict, path: str = "") -> list[str]:
    """Paths where the manifest sets a field that carries x-kubernetes-validations (CEL) rules: those rules are
    checked by the API server only, so each such field needs a hand-written check here."""
    found = [f"{path or '<root>'}: {[r.get('rule') for r in schema['x-kubernetes-validations']]}"] \
        if "x-kubernetes-validations" in schema else []
    if isinstance(instance, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if isinstance(sub, dict):
                found += _cel_rules_reached(value, sub, f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            found += _cel_rules_reached(value, schema["items"], f"{path}[{i}]")
    return found


def crd_errors(doc: dict) -> list[str]:
    """Schema errors of a RayCluster / RayJob against the KubeRay CRD of its apiVersion."""
    validator = crd_validator(doc.get("apiVersion", ""), doc.get("kind", ""))
    if validator is None:
        return [f"no KubeRay CRD serves apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r} "
                f"(CRDs: {sorted(crd_schemas())})"]
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in validator.iter_errors(doc)]
    errors += [f"CEL rule not checked offline: {r}" for r in _cel_rules_reached(doc, validator.schema)]
    return errors


# ----------------------------------------------------------------------------------------------------------------
# Validator 2: built-in kinds (kubernetes-validate)


def _kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the `test` extra: "
                                                             "pip install -c constraints.txt -e '.[test]'")


def k8s_errors(doc: dict, version: str = K8S_VERSIONS[0]) -> list[str]:
    """Strict schema errors of a built-in Kubernetes object (first error only: that is what the package reports)."""
    kv = _kubernetes_validate()
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message} (Kubernetes {e.version})"]
    except kv.SchemaNotFoundError as e:
        return [e.message]
    return []


def pod_template_errors(template: dict, version: str = K8S_VERSIONS[0]) -> list[str]:
    """A pod template as Kubernetes itself would check it (wrapped in a v1 PodTemplate object)."""
    return k8s_errors({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                       "template": template}, version)


# ----------------------------------------------------------------------------------------------------------------
# Validator 3: what KubeRay, the pipeline and this deployment expect beyond the schemas


@dataclass
class Context:
    """What the documents refer to each other by (from the plain manifests, the Dockerfile, constraints.txt)."""

    configmaps: dict[str, dict]
    services: dict[str, dict]
    service_accounts: set[str]
    pvcs: set[str]
    deployments: dict[str, dict]
    workdir: str
    ray_version: str
    runtime_image_names: set[str]

    @classmethod
    def build(cls) -> "Context":
        by_kind: dict[str, dict[str, dict]] = {}
        for m in kube_objects():
            by_kind.setdefault(m.kind, {})[m.name] = m.doc
        workdirs = [ins.split(None, 1)[1] for ins in dockerfile_stages()["runtime"]
                    if ins.upper().startswith("WORKDIR")]
        renamed = {i.get("newName", i["name"]) for k in _kustomizations() for i in k.doc.get("images", [])
                   if i["name"] == RUNTIME_IMAGE_NAME}
        return cls(configmaps=by_kind.get("ConfigMap", {}), services=by_kind.get("Service", {}),
                   service_accounts=set(by_kind.get("ServiceAccount", {})),
                   pvcs=set(by_kind.get("PersistentVolumeClaim", {})), deployments=by_kind.get("Deployment", {}),
                   workdir=workdirs[-1], ray_version=constraints()["ray"],
                   runtime_image_names={RUNTIME_IMAGE_NAME} | renamed)

    def mlflow_uri(self) -> str:
        """http://<service>:<port> of the MLflow server, from its Service."""
        svc = self.services["mlflow"]
        return f"http://mlflow:{svc['spec']['ports'][0]['port']}"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def ray_errors(doc: dict, ctx: Context) -> list[str]:
    """KubeRay's controller checks plus this deployment's rules, for a RayCluster or RayJob."""
    errors: list[str] = []
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name", "")
    limit = MAX_RAYCLUSTER_NAME if kind == "RayCluster" else MAX_RAYJOB_NAME
    if not DNS1035.match(name) or len(name) > limit:
        errors.append(f"metadata.name {name!r}: KubeRay needs a DNS-1035 label of at most {limit} characters")
    if kind == "RayJob":
        errors += _rayjob_errors(doc, ctx)
    for where, spec in ray_cluster_specs(doc):
        errors += [f"{where}: {e}" for e in _cluster_spec_errors(spec, ctx)]
    return errors


def _rayjob_errors(doc: dict, ctx: Context) -> list[str]:
    spec = doc.get("spec") or {}
    errors = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        errors.append("spec.shutdownAfterJobFinishes must be true: a finished job gives its cluster back")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if not isinstance(ttl, int) or ttl < 0:
        errors.append(f"spec.ttlSecondsAfterFinished {ttl!r}: a non-negative integer")
    elif ttl > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append("spec.ttlSecondsAfterFinished needs shutdownAfterJobFinishes (KubeRay refuses it otherwise)")
    backoff = spec.get("backoffLimit")
    if not isinstance(backoff, int) or isinstance(backoff, bool) or backoff < 0:
        errors.append(f"spec.backoffLimit {backoff!r}: set it explicitly, a non-negative integer")
    deadline = spec.get("activeDeadlineSeconds")
    if not isinstance(deadline, int) or deadline <= 0:
        errors.append(f"spec.activeDeadlineSeconds {deadline!r}: a positive integer (a stuck job must end)")
    if spec.get("clusterSelector") or not isinstance(spec.get("rayClusterSpec"), dict):
        errors.append("spec.rayClusterSpec must be set and clusterSelector not: each stage runs on its own cluster")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    except yaml.YAMLError as e:
        errors.append(f"spec.runtimeEnvYAML is not YAML: {e}")
        runtime_env = {}
    if not isinstance(runtime_env, dict):
        errors.append("spec.runtimeEnvYAML must be a mapping")
    elif not all(isinstance(v, str) for v in (runtime_env.get("env_vars") or {}).values()):
        errors.append("spec.runtimeEnvYAML env_vars values must be strings")
    errors += _entrypoint_errors(spec, ctx)
    return errors


def _entrypoint_errors(spec: dict, ctx: Context) -> list[str]:
    """`python jobs/<stage>.py --config /configs/<key>`: the script exists or is planned; the config is a key of the
    ConfigMap that the head mounts at that folder."""
    argv = shlex.split(spec.get("entrypoint") or "")
    if len(argv) < 2 or argv[0] != "python":
        return [f"spec.entrypoint {spec.get('entrypoint')!r}: expected `python jobs/<stage>.py --config ...`"]
    errors = []
    script = os.path.normpath(argv[1])
    if not (ROOT / script).is_file() and script not in PLANNED_ENTRYPOINTS:
        errors.append(f"spec.entrypoint: {script} is neither in jobs/ nor in PLANNED_ENTRYPOINTS")
    if "--config" not in argv[:-1]:
        return errors + ["spec.entrypoint: no --config <file>"]
    config = Path(argv[argv.index("--config") + 1])
    head = (spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {}
    volumes = {v["name"]: v for v in (head.get("template") or {}).get("spec", {}).get("volumes") or []}
    mounts = {vm["mountPath"]: vm["name"] for vm in ray_container(head).get("volumeMounts") or []}
    volume = volumes.get(mounts.get(str(config.parent), ""), {})
    cm_name = (volume.get("configMap") or {}).get("name")
    if cm_name is None:
        errors.append(f"spec.entrypoint: {config.parent} is not a ConfigMap mounted in the head container")
    elif config.name not in (ctx.configmaps.get(cm_name) or {}).get("data", {}):
        errors.append(f"spec.entrypoint: ConfigMap {cm_name} has no key {config.name}")
    return errors


def _cluster_spec_errors(spec: dict, ctx: Context) -> list[str]:
    errors = []
    if spec.get("rayVersion") != ctx.ray_version:
        errors.append(f"rayVersion {spec.get('rayVersion')!r} != ray {ctx.ray_version} in constraints.txt")
    if (spec.get("authOptions") or {}).get("mode") == "token":
        if _version_tuple(str(spec.get("rayVersion", "0"))) < (2, 52, 0):
            errors.append("authOptions.mode token needs rayVersion >= 2.52.0")
        if spec["authOptions"].get("secretName") not in HAND_MADE_SECRETS:
            errors.append(f"authOptions.secretName {spec['authOptions'].get('secretName')!r} not in HAND_MADE_SECRETS")
    if spec.get("enableInTreeAutoscaling") is not True:
        errors.append("enableInTreeAutoscaling must be true")
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if not isinstance(idle, int) or idle <= 0:
        errors.append(f"autoscalerOptions.idleTimeoutSeconds {idle!r}: set it, a positive integer")
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs") or []]
    if len(names) != len(set(names)):
        errors.append(f"worker group names are not unique: {names}")
    if not {CPU_GROUP, GPU_GROUP} <= set(names):
        errors.append(f"worker groups {names}: expected {CPU_GROUP} (decoding, preprocessing) and {GPU_GROUP}")
    for group_name, group in ray_groups(spec):
        where = f"group {group_name}"
        if group_name != "head":
            lo, hi = group.get("minReplicas"), group.get("maxReplicas")
            n = group.get("replicas", lo)
            if not all(isinstance(x, int) for x in (lo, hi, n)):
                errors.append(f"{where}: minReplicas and maxReplicas must be set (got {lo!r}, {hi!r})")
            elif not 0 <= lo <= n <= hi <= MAX_WORKERS_PER_GROUP or hi < 1:
                errors.append(f"{where}: need 0 <= minReplicas ({lo}) <= replicas ({n}) <= maxReplicas ({hi}) "
                              f"<= {MAX_WORKERS_PER_GROUP} and maxReplicas >= 1")
        c = ray_container(group)
        gpus = gpu_limit(c)
        if group_name == GPU_GROUP:
            try:
                ok = int(gpus) >= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                errors.append(f"{where}: the Ray container needs resources.limits['nvidia.com/gpu'] >= 1, got {gpus!r}")
        elif gpus is not None:
            errors.append(f"{where}: only {GPU_GROUP} asks for GPUs")
        errors += [f"{where}: {e}" for e in _ray_pod_errors(group.get("template") or {}, c, ctx)]
    return errors


def _ray_pod_errors(template: dict, c: dict, ctx: Context) -> list[str]:
    errors = []
    image = c.get("image", "")
    if _split_image(image)[0] not in ctx.runtime_image_names:
        errors.append(f"image {image!r}: every Ray container runs the runtime image {sorted(ctx.runtime_image_names)}")
    if c.get("workingDir") != ctx.workdir:
        errors.append(f"workingDir {c.get('workingDir')!r} != the image's WORKDIR {ctx.workdir} (entrypoints are "
                      "relative to it)")
    uri = env_value(c, "MLFLOW_TRACKING_URI")
    if "mlflow" not in ctx.services:
        errors.append("MLFLOW_TRACKING_URI: no `mlflow` Service in the manifests")
    elif uri != ctx.mlflow_uri():
        errors.append(f"MLFLOW_TRACKING_URI {uri!r} != {ctx.mlflow_uri()} (the mlflow Service)")
    pod = template.get("spec") or {}
    if pod.get("serviceAccountName") not in ctx.service_accounts:
        errors.append(f"serviceAccountName {pod.get('serviceAccountName')!r} is not a ServiceAccount in cluster/")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {vm["mountPath"]: volumes.get(vm["name"], {}) for vm in c.get("volumeMounts") or []}
    if "configMap" not in mounts.get("/configs", {}):
        errors.append("the run config (a ConfigMap) must be mounted at /configs")
    if (mounts.get("/data", {}).get("persistentVolumeClaim") or {}).get("claimName") not in ctx.pvcs:
        errors.append("the shared volume (a PVC in cluster/) must be mounted at /data: Ray Data writes from any pod")
    return errors


def reference_errors(m: Manifest, ctx: Context) -> list[str]:
    """ConfigMaps, PVCs, ServiceAccounts and Secrets that a pod template refers to must exist or be documented."""
    errors = []
    for where, template in pod_templates(m.doc):
        pod = template.get("spec") or {}
        for v in pod.get("volumes") or []:
            if "configMap" in v and v["configMap"]["name"] not in ctx.configmaps:
                errors.append(f"{where}: ConfigMap {v['configMap']['name']} not in cluster/")
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in ctx.pvcs:
                errors.append(f"{where}: PVC {v['persistentVolumeClaim']['claimName']} not in cluster/")
            if "secret" in v and v["secret"].get("secretName") not in HAND_MADE_SECRETS:
                errors.append(f"{where}: Secret {v['secret'].get('secretName')} not in HAND_MADE_SECRETS")
        sa = pod.get("serviceAccountName")
        if sa is not None and sa not in ctx.service_accounts:
            errors.append(f"{where}: ServiceAccount {sa} not in cluster/")
        for c in containers(template):
            refs = [(e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") for e in c.get("env") or []]
            refs += [(e.get("secretRef") or {}).get("name") for e in c.get("envFrom") or []]
            for secret in filter(None, refs):
                if secret not in HAND_MADE_SECRETS:
                    errors.append(f"{where}/{c.get('name')}: Secret {secret} not in HAND_MADE_SECRETS")
            cms = [(e.get("valueFrom") or {}).get("configMapKeyRef", {}).get("name") for e in c.get("env") or []]
            cms += [(e.get("configMapRef") or {}).get("name") for e in c.get("envFrom") or []]
            errors += [f"{where}/{c.get('name')}: ConfigMap {cm} not in cluster/" for cm in filter(None, cms)
                       if cm not in ctx.configmaps]
    return errors


# ----------------------------------------------------------------------------------------------------------------
# Validator 4: hardening (issue 18): nothing exposed, no literal secret, no password on a command line, non-root
# pods with dropped capabilities, NetworkPolicies that let in only the pipeline's own traffic


def service_exposure_errors(doc: dict) -> list[str]:
    """Services (and the Services KubeRay makes for a head) reachable from outside the cluster: none."""
    errors = []
    if doc.get("kind") == "Service":
        spec = doc.get("spec") or {}
        if spec.get("type", "ClusterIP") in EXPOSED_SERVICE_TYPES or spec.get("externalIPs"):
            errors.append(f"Service type {spec.get('type')!r} / externalIPs: reach it with kubectl port-forward")
    for where, spec in ray_cluster_specs(doc):
        service_type = (spec.get("headGroupSpec") or {}).get("serviceType", "ClusterIP")
        if service_type in EXPOSED_SERVICE_TYPES:
            errors.append(f"{where}.headGroupSpec.serviceType {service_type}: the Jobs API would be public")
    return errors


def _autoscaler_container(spec: dict) -> dict | None:
    """The sidecar KubeRay adds to the head for in-tree autoscaling, as far as the manifest decides it."""
    if spec.get("enableInTreeAutoscaling") is not True:
        return None
    options = spec.get("autoscalerOptions") or {}
    return {"name": "autoscaler (KubeRay sidecar)", "securityContext": options.get("securityContext") or {},
            "env": options.get("env") or [], "envFrom": options.get("envFrom") or []}


def workload_pods(doc: dict) -> Iterator[tuple[str, dict, list[dict], bool]]:
    """(where, pod template, its containers incl. init and KubeRay's sidecar, whether the pod needs its
    service-account token) for every pod a document makes. Only a Ray head with in-tree autoscaling needs the
    token: KubeRay binds the autoscaler's Role to the head's service account."""
    heads = {f"{where}/head": spec for where, spec in ray_cluster_specs(doc)}
    for where, template in pod_templates(doc):
        extra = [c for c in [_autoscaler_container(heads[where])] if c] if where in heads else []
        yield where, template, containers(template) + extra, bool(extra)


def literal_secret_errors(doc: dict) -> list[str]:
    """Secret values written into a manifest: an env var whose name says password/token/secret/key with a
    `value:`, a URI with a password, a password line in a ConfigMap, a secret in a RayJob's runtime env."""
    errors = []
    for where, _, cs, _ in workload_pods(doc):
        for c in cs:
            for e in c.get("env") or []:
                if "value" in e and SECRET_NAME.search(e["name"]) and not e["name"].endswith(("_FILE", "_PATH")):
                    errors.append(f"{where}/{c.get('name')}: env {e['name']} has a literal value; use secretKeyRef")
                if URI_WITH_PASSWORD.search(str(e.get("value", ""))):
                    errors.append(f"{where}/{c.get('name')}: env {e['name']} holds a URI with a password")
            errors += [f"{where}/{c.get('name')}: {e}" for e in command_line_errors(c)]
    if doc.get("kind") == "ConfigMap":
        for key, text in (doc.get("data") or {}).items():
            for line in str(text).splitlines():
                if PASSWORD_LINE.search(line) or URI_WITH_PASSWORD.search(line):
                    errors.append(f"ConfigMap {doc['metadata']['name']} key {key}: a secret in {line.strip()!r}")
    if doc.get("kind") == "RayJob":
        env = (yaml.safe_load((doc.get("spec") or {}).get("runtimeEnvYAML") or "{}") or {}).get("env_vars") or {}
        errors += [f"runtimeEnvYAML env_vars {k}: a secret in the job's runtime env" for k in env
                   if SECRET_NAME.search(k)]
    return errors


def command_line_errors(c: dict) -> list[str]:
    """A password on a container's command line, where every process listing shows it: a URI with a password,
    a --*password*= option, or $(VAR) of a variable that Kubernetes would fill from a Secret (secretKeyRef, or
    envFrom a Secret: anything not set by a literal value)."""
    literal = {e["name"] for e in c.get("env") or [] if "value" in e}
    errors = []
    for arg in [*(c.get("command") or []), *(c.get("args") or [])]:
        if URI_WITH_PASSWORD.search(arg):
            errors.append(f"a URI with a password on the command line: {arg!r}")
        if re.match(r"--?[\w-]*(passw|secret|token)[\w-]*=", arg, re.I):
            errors.append(f"a secret option on the command line: {arg.split('=', 1)[0]}")
        errors += [f"$({var}) puts a Secret's value on the command line: {arg!r}"
                   for var in re.findall(r"\$\((\w+)\)", arg) if var not in literal]
    return errors


def _effective_security(pod_sc: dict, c_sc: dict) -> dict:
    """A container's security settings: the pod's, overridden by the container's (as the kubelet merges them)."""
    return {**{k: pod_sc[k] for k in POD_LEVEL_SECURITY if k in pod_sc}, **c_sc}


def pod_security_errors(doc: dict) -> list[str]:
    """Every container (init containers, KubeRay's autoscaler sidecar and the RayJob submitter included) runs
    non-root, without privilege escalation, with all capabilities dropped and a seccomp profile; no pod shares
    the node's namespaces; the service-account token is mounted only where it is used."""
    errors = []
    if doc.get("kind") == "RayJob":
        spec = doc.get("spec") or {}
        if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode" and not spec.get("submitterPodTemplate"):
            errors.append("spec.submitterPodTemplate: without it KubeRay's default submitter pod runs with no "
                          "security context")
    for where, template, cs, needs_token in workload_pods(doc):
        pod = template.get("spec") or {}
        pod_sc = pod.get("securityContext") or {}
        errors += [f"{where}: {k}: true shares the node's namespaces" for k in ("hostNetwork", "hostPID", "hostIPC")
                   if pod.get(k)]
        if not needs_token and pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: automountServiceAccountToken must be false (nothing in it calls the API)")
        for c in cs:
            sc = _effective_security(pod_sc, c.get("securityContext") or {})
            who = f"{where}/{c.get('name')}"
            if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") == 0:
                errors.append(f"{who}: runAsNonRoot must be true (and runAsUser not 0)")
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
                errors.append(f"{who}: allowPrivilegeEscalation must be false (and privileged unset)")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
                errors.append(f"{who}: capabilities must drop [ALL] and add none")
            if (sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{who}: seccompProfile must be RuntimeDefault (or Localhost)")
    return errors


def hardening_errors(doc: dict) -> list[str]:
    return service_exposure_errors(doc) + literal_secret_errors(doc) + pod_security_errors(doc)


# NetworkPolicy semantics, for checking which flows the policies under cluster/ allow (an evaluator of the
# networking.k8s.io/v1 rules: pod/namespace selectors with matchLabels and matchExpressions, ipBlock, ports by
# number, range or name, policyTypes; a flow needs the source's egress and the destination's ingress to allow it).


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels) or, with namespace None, an address outside the cluster."""

    role: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()        # named container ports
    ip: str = ""

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _selects(selector: dict | None, labels: dict[str, str]) -> bool:
    for key, value in ((selector or {}).get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in (selector or {}).get("matchExpressions") or []:
        has, values = e["key"] in labels, e.get("values") or []
        ok = {"In": has and labels.get(e["key"]) in values, "NotIn": not (has and labels.get(e["key"]) in values),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        if ep.namespace is not None:
            return False       # pod IPs: whether ipBlock applies is up to the network plugin; not relied on
        ip = ipaddress.ip_address(ep.ip)
        return (ip in ipaddress.ip_network(peer["ipBlock"]["cidr"])
                and not any(ip in ipaddress.ip_network(x) for x in peer["ipBlock"].get("except") or []))
    if ep.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ep.namespace})
    else:
        ns_ok = ep.namespace == policy_ns
    return ns_ok and _selects(peer.get("podSelector"), ep.label_map)


def _port_matches(ports: list[dict] | None, port: int, protocol: str, dst: Endpoint) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        if value is None or (isinstance(value, str) and dict(dst.ports).get(value) == port):
            return True
        if isinstance(value, int) and value <= port <= p.get("endPort", value):
            return True
    return False


def _direction_allows(policies: list[dict], direction: str, selected: Endpoint, peer: Endpoint, port: int,
                      protocol: str, dst: Endpoint) -> bool:
    if selected.namespace is None:
        return True                                      # outside the cluster: not ours to police
    key, peers_key = direction.lower(), "from" if direction == "Ingress" else "to"
    applying = []
    for p in policies:
        spec = p.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        if (p["metadata"].get("namespace") == selected.namespace and direction in types
                and _selects(spec.get("podSelector"), selected.label_map)):
            applying.append(p)
    if not applying:
        return True
    for p in applying:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(x, p["metadata"]["namespace"], peer) for x in peers)) \
                    and _port_matches(rule.get("ports"), port, protocol, dst):
                return True
    return False


def flow_allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return (_direction_allows(policies, "Egress", src, dst, port, protocol, dst)
            and _direction_allows(policies, "Ingress", dst, src, port, protocol, dst))


def workload_role(labels: dict[str, str]) -> str:
    return labels.get("app.kubernetes.io/component") or labels.get("app.kubernetes.io/name") or "<unlabeled>"


def workload_endpoints() -> dict[str, Endpoint]:
    """One endpoint per kind of pod the manifests make (role = component or name label), with its labels and
    named ports; every template of a role must carry the same labels, or one policy could miss some of them."""
    found: dict[str, Endpoint] = {}
    for m in kube_objects():
        for where, template, cs, _ in workload_pods(m.doc):
            labels = (template.get("metadata") or {}).get("labels") or {}
            ports = tuple(sorted((p["name"], p["containerPort"]) for c in cs for p in c.get("ports") or []
                                 if "name" in p))
            ep = Endpoint(workload_role(labels), m.doc["metadata"].get("namespace"), tuple(sorted(labels.items())),
                          ports)
            assert found.setdefault(ep.role, ep).labels == ep.labels, f"{m.id} {where}: labels differ for {ep.role}"
    return found


def network_policies() -> list[dict]:
    return [m.doc for m in of_kind("NetworkPolicy")]


def unexpected_flows(policies: list[dict]) -> list[tuple[str, str, int, bool]]:
    """Every (source, destination, port) among the workloads, a stranger pod of the namespace, a look-alike Ray
    head in another namespace and the KubeRay operator whose fate under `policies` differs from the pipeline's
    need: Ray pods talk among themselves on any port and to MLflow; MLflow to its database; the RayJob
    submitter and the operator reach the head's dashboard (Jobs API); nothing else gets in."""
    ours = workload_endpoints()
    stranger = Endpoint("stranger", NAMESPACE, (("run", "data-loader"),))
    look_alike = Endpoint("look-alike", "elsewhere", ours["ray-head"].labels)
    operator = Endpoint("operator", "kuberay-system", (("app.kubernetes.io/name", "kuberay-operator"),))
    ports = {5000, 5432, 6379, 8080, 8265, 10001, 23456} | {p for ep in ours.values() for _, p in ep.ports}

    def needed(src: str, dst: str, port: int) -> bool:
        return ((src in RAY_ROLES and dst in RAY_ROLES)                            # Ray's own traffic, any port
                or (src in RAY_ROLES and dst == "mlflow" and port == 5000)         # tracking, registry, artifacts
                or (src == "mlflow" and dst == "mlflow-db" and port == 5432)
                or (src in (SUBMITTER_ROLE, "operator") and dst == "ray-head" and port == 8265))   # Jobs API
    return [(s.role, d.role, port, allowed) for s in [*ours.values(), stranger, look_alike, operator]
            for d in ours.values() for port in sorted(ports)
            if (allowed := flow_allowed(policies, s, d, port)) != needed(s.role, d.role, port)]


def default_deny_errors(policies: list[dict]) -> list[str]:
    """A policy that selects every pod of the namespace and lets nothing in: pods that no other policy selects
    (a `kubectl run` pod, anything added later) get no ingress."""
    deny = [p for p in policies if not (p["spec"].get("podSelector") or {})
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and not p["spec"].get("ingress")]
    return [] if deny else ["no NetworkPolicy selects every pod with no ingress rule (default deny)"]


def own_policy_errors(policies: list[dict]) -> list[str]:
    """Each kind of pod is selected by a policy written for it (a non-empty podSelector)."""
    return [f"{role}: no NetworkPolicy of its own (labels {ep.label_map})" for role, ep in workload_endpoints().items()
            if not any((p["spec"].get("podSelector") or {}) and _selects(p["spec"]["podSelector"], ep.label_map)
                       for p in policies)]


def egress_errors(policies: list[dict]) -> list[str]:
    """What the restricted pods may reach: DNS; MLflow its bucket over HTTPS; the database nothing; the submitter
    nothing but the Jobs API; and no ingress rule is open to every pod or every namespace."""
    ours = workload_endpoints()
    dns = Endpoint("kube-dns", "kube-system", (("k8s-app", "kube-dns"),))
    bucket = Endpoint("object store", None, ip="52.218.0.10")
    errors = [f"{role}: no DNS ({proto})" for role in ("mlflow", SUBMITTER_ROLE, *RAY_ROLES)
              for proto in ("UDP", "TCP") if not flow_allowed(policies, ours[role], dns, 53, proto)]
    checks = [(ours["mlflow"], bucket, 443, True, "MLflow writes artifacts to the bucket over HTTPS"),
              (ours["mlflow"], bucket, 5432, False, "MLflow egress: only what it uses"),
              (ours["mlflow-db"], bucket, 443, False, "the database needs no egress"),
              (ours["mlflow-db"], dns, 53, False, "the database needs no egress"),
              (ours[SUBMITTER_ROLE], ours["mlflow"], 5000, False, "the submitter: the Jobs API only"),
              (ours[SUBMITTER_ROLE], bucket, 443, False, "the submitter: the Jobs API only")]
    errors += [why for src, dst, port, want, why in checks if flow_allowed(policies, src, dst, port) != want]
    for p in policies:
        for rule in p["spec"].get("ingress") or []:
            if not rule.get("from") or any("ipBlock" in x or x.get("namespaceSelector") == {} for x in rule["from"]):
                errors.append(f"{p['metadata']['name']}: an ingress rule open to every pod or address")
    return errors


def network_policy_errors(policies: list[dict]) -> list[str]:
    return (default_deny_errors(policies) + own_policy_errors(policies) + egress_errors(policies)
            + [f"flow {s} -> {d}:{port} {'allowed' if a else 'refused'}"
               for s, d, port, a in unexpected_flows(policies)])


def runbook_pod_overrides() -> list[dict]:
    """The pod specs that the runbook's `kubectl run ... --overrides='{...}'` commands start."""
    text = (CLUSTER / "README.md").read_text()
    found = re.findall(r"kubectl[^\n]*\brun\b[^\n]*--overrides='(.*?)'", text, re.S)
    runs = re.findall(r"kubectl[^\n]*\brun\b", text)
    assert len(found) == len(runs), "every `kubectl run` of the runbook sets its pod spec with --overrides"
    return [json.loads(f) for f in found]


# ----------------------------------------------------------------------------------------------------------------
# Network guard: everything here must work offline


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test of this module runs with sockets disabled: a validator that tries to download fails."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during offline manifest validation")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _require_crds() -> None:
    if not any(KUBERAY_SCHEMAS.glob("*.yaml")):
        pytest.skip(f"KubeRay CRD schemas not found in {KUBERAY_SCHEMAS} (set NAKT_KUBERAY_SCHEMAS to a folder "
                    "holding ray.io_rayclusters.yaml and ray.io_rayjobs.yaml)")


# ----------------------------------------------------------------------------------------------------------------
# Tests: inventory


def test_every_document_has_a_kind_and_a_name():
    kinds = {m.kind for m in all_manifests()}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "ConfigMap", "PersistentVolumeClaim",
            "ServiceAccount", "Namespace", "Kustomization", "Component", VALUES_KIND} <= kinds, kinds
    for m in all_manifests():
        assert m.doc.get("apiVersion") and m.kind, m.id
        assert m.name or m.kind in KUSTOMIZE_KINDS, m.id
    ids = [(m.doc.get("apiVersion"), m.kind, m.name) for m in kube_objects()]
    assert len(ids) == len(set(ids)), "two documents define the same object"


def test_one_rayjob_per_stage():
    entrypoints = [shlex.split(m.doc["spec"]["entrypoint"])[1] for m in of_kind("RayJob")]
    assert STAGE_ENTRYPOINTS <= set(entrypoints)
    assert all((ROOT / e).is_file() for e in STAGE_ENTRYPOINTS)
    assert len(entrypoints) == len(set(entrypoints)), entrypoints


# Tests: KubeRay CRDs


@pytest.mark.parametrize("m", [m for m in checked_objects() if m.doc["apiVersion"].startswith("ray.io/")],
                         ids=lambda m: m.id)
def test_ray_resources_match_the_kuberay_crd(m):
    _require_crds()
    assert crd_errors(m.doc) == []


def test_crd_versions_in_use_are_the_stored_ones():
    _require_crds()
    stored = {(f"{c['spec']['group']}/{v['name']}", c["spec"]["names"]["kind"])
              for c in crds() for v in c["spec"]["versions"] if v.get("storage")}
    used = {(m.doc["apiVersion"], m.kind) for m in all_manifests() if m.doc.get("apiVersion", "").startswith("ray.io/")}
    assert used <= stored, f"use the CRDs' storage versions {sorted(stored)}"


@pytest.mark.parametrize("m", [m for m in checked_objects() if m.kind in ("RayCluster", "RayJob")], ids=lambda m: m.id)
def test_ray_resources_meet_kuberay_and_pipeline_rules(m):
    assert ray_errors(m.doc, Context.build()) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("m", [m for m in checked_objects() if m.kind in ("RayCluster", "RayJob")], ids=lambda m: m.id)
def test_pod_templates_inside_ray_resources_are_valid_kubernetes(m, version):
    for where, template in pod_templates(m.doc):
        assert pod_template_errors(template, version) == [], where


# Tests: built-in kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("m", [m for m in checked_objects() if not m.doc["apiVersion"].startswith("ray.io/")],
                         ids=lambda m: m.id)
def test_builtin_kinds_match_the_kubernetes_schema(m, version):
    assert k8s_errors(m.doc, version) == []


def test_kubernetes_validate_ships_its_schemas_and_works_offline():
    kv = _kubernetes_validate()
    with pytest.raises(OSError, match="network access attempted"):
        socket.create_connection(("raw.githubusercontent.com", 443), timeout=1)   # the guard is active
    for version in K8S_VERSIONS:
        assert kv.validate(one("Deployment", "mlflow").doc, version, strict=True) == version.rsplit(".", 1)[0]
    schema_dirs = {p.name for p in (Path(kv.__file__).parent / "kubernetes-json-schema").iterdir()}
    assert {f"v{v}-local-strict" for v in K8S_VERSIONS} <= schema_dirs


def test_namespaced_objects_live_in_one_namespace():
    assert one("Namespace").name == NAMESPACE
    for m in kube_objects():
        if m.kind != "Namespace":
            assert m.doc["metadata"].get("namespace") == NAMESPACE, m.id
    for m in all_manifests():
        if m.kind == "Kustomization":
            assert m.doc.get("namespace") == NAMESPACE, m.id


# Tests: cross-references


@pytest.mark.parametrize("m", checked_objects(), ids=lambda m: m.id)
def test_references_resolve(m):
    assert reference_errors(m, Context.build()) == []


def test_hand_made_secrets_are_exactly_those_referenced_and_the_runbook_creates_them():
    referenced = set()
    for m in kube_objects():
        for _, template in pod_templates(m.doc):
            for c in containers(template):
                referenced |= {(e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name")
                               for e in c.get("env") or []}
                referenced |= {(e.get("secretRef") or {}).get("name") for e in c.get("envFrom") or []}
            referenced |= {(v.get("secret") or {}).get("secretName") for v in template["spec"].get("volumes") or []}
        for _, spec in ray_cluster_specs(m):
            referenced.add((spec.get("authOptions") or {}).get("secretName"))
    assert referenced - {None} == HAND_MADE_SECRETS
    runbook = (CLUSTER / "README.md").read_text()
    for secret in HAND_MADE_SECRETS:
        assert re.search(rf"create secret generic {secret}\b", runbook), f"README does not create Secret {secret}"
    assert not of_kind("Secret"), "no Secret is committed; the runbook creates them"


@pytest.mark.parametrize("m", of_kind("Service"), ids=lambda m: m.id)
def test_services_select_pods_with_their_target_ports(m):
    selector = m.doc["spec"]["selector"]
    pods = [d["spec"]["template"] for d in Context.build().deployments.values()
            if selector.items() <= (d["spec"]["template"]["metadata"].get("labels") or {}).items()]
    assert len(pods) == 1, f"{m.id}: selector {selector} matches {len(pods)} Deployments"
    ports = {p.get("name"): p["containerPort"] for c in containers(pods[0]) for p in c.get("ports") or []}
    for port in m.doc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in ports or target in ports.values(), f"{m.id}: targetPort {target} not in {ports}"


def test_jobs_reach_mlflow_through_its_service_and_allowed_hosts():
    ctx = Context.build()
    host = urlparse(ctx.mlflow_uri()).netloc
    server = one("Deployment", "mlflow").doc["spec"]["template"]["spec"]["containers"][0]
    allowed = env_value(server, "MLFLOW_SERVER_ALLOWED_HOSTS").split(",")
    for client in (host, "localhost:5000"):                       # in-cluster jobs; kubectl port-forward
        assert any(fnmatch.fnmatch(client, pattern) for pattern in allowed), (client, allowed)
    backend = next(a.split("=", 1)[1] for a in server["args"] if a.startswith("--backend-store-uri="))
    db = urlparse(backend)
    db_svc = ctx.services[db.hostname]
    assert db.scheme.startswith("postgresql") and db.port == db_svc["spec"]["ports"][0]["port"]
    assert "--serve-artifacts" in server["args"], "jobs upload artifacts through the server, not to the bucket"
    assert server["image"].rsplit(":", 1) == [MLFLOW_IMAGE_NAME, constraints()["mlflow"]]


def _rendered_docs() -> list[dict]:
    return [doc for k in _kustomizations() if k.kind == "Kustomization" for doc in render(k)]


def test_images_are_pinned_and_the_ray_image_is_one():
    (component,) = [k for k in _kustomizations() if k.kind == "Component"]
    assert {i["name"] for i in component.doc["images"]} == {RUNTIME_IMAGE_NAME, MLFLOW_IMAGE_NAME}
    for docs in ([m.doc for m in kube_objects()], _rendered_docs()):
        images = {c.get("image", "") for d in docs for _, t in pod_templates(d) for c in containers(t)}
        assert all(_split_image(i)[1] not in ("", "latest") for i in images), images
        ray_images = {ray_container(g).get("image") for d in docs for _, spec in ray_cluster_specs(d)
                      for _, g in ray_groups(spec)}
        assert len(ray_images) == 1, ray_images
    plain_ray_image = ray_container(one("RayCluster").doc["spec"]["headGroupSpec"])["image"]
    assert _split_image(plain_ray_image)[0] == RUNTIME_IMAGE_NAME, "plain manifests use the placeholder names"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert _split_image(plain_ray_image)[1] == version, "the runtime image is tagged with the project's version"
    mlflow = [c["image"] for d in _rendered_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert [_split_image(i)[1] for i in mlflow] == [constraints()["mlflow"]], "MLflow server = client version"


def test_run_config_uses_documented_keys_only():
    table = set(re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs" / "config.md").read_text(), re.M))
    assert table, "docs/config.md has no key table"
    config = yaml.safe_load(one("ConfigMap", "nakt-run-config").doc["data"]["run.yaml"])
    unknown = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = prefix + key
            if isinstance(value, dict) and dotted not in table:
                walk(value, dotted + ".")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for item in value:
                    walk(item, dotted + "[].")
            elif dotted not in table:
                unknown.append(dotted)
    walk(config, "")
    assert unknown == []
    assert config["ray"]["address"] == "auto", "the job's driver joins the cluster it runs on"
    assert config["tracking"].get("uri") is None, "the tracking URI comes from MLFLOW_TRACKING_URI in the pods"
    assert config["run_dir"].startswith("/data/"), "run_dir must be on the shared volume"


# Tests: kustomize and values


def test_every_manifest_belongs_to_exactly_one_kustomization():
    listed: list[Path] = []
    for k in _kustomizations():
        for res in k.doc.get("resources", []):
            assert (k.path.parent / res).is_file(), f"{k.id}: resource {res} missing"
            listed.append((k.path.parent / res).resolve())
        for comp in k.doc.get("components", []):
            assert (k.path.parent / comp / "kustomization.yaml").is_file(), f"{k.id}: component {comp} missing"
    files = {m.path.resolve() for m in all_manifests() if m.kind not in KUSTOMIZE_KINDS}
    assert sorted(listed) == sorted(files)


def test_values_land_on_fields_that_hold_the_same_default():
    (component,) = [m for m in _kustomizations() if m.kind == "Component"]
    values = values_doc()
    for r in component.doc["replacements"]:
        source = _field(values, r["source"]["fieldPath"])
        for target in r["targets"]:
            select = target["select"]
            docs = [m for m in kube_objects() if m.kind == select["kind"] and select.get("name", m.name) == m.name]
            assert docs, f"replacement target {select} matches nothing"
            for m in docs:
                for path in target["fieldPaths"]:
                    try:
                        value = _field(m.doc, path)
                    except (KeyError, StopIteration, IndexError):
                        pytest.fail(f"{m.id}: {path} does not exist (replacement of {r['source']['fieldPath']})")
                    assert value == source, f"{m.id}: {path} = {value!r}, values.yaml default {source!r}"


def test_values_are_valid_kubernetes_fields():
    v = values_doc()
    assert set(v) == {"apiVersion", "kind", "metadata", "cpuNodes", "gpuNodes", "cpuWorkers", "gpuWorkers",
                      "sharedStorage", "mlflow"}
    assert v["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    for nodes, workers in (("cpuNodes", "cpuWorkers"), ("gpuNodes", "gpuWorkers")):
        template = {"spec": {"nodeSelector": v[nodes]["nodeSelector"], "tolerations": v[nodes]["tolerations"],
                             "containers": [{"name": "c", "image": "i:1", "resources": v[workers]["resources"]}]}}
        assert pod_template_errors(template) == [], nodes
    assert gpu_limit({"resources": v["gpuWorkers"]["resources"]}) is not None
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": v["sharedStorage"]["storageClassName"],
                    "resources": {"requests": {"storage": v["sharedStorage"]["size"]}}}}
    assert k8s_errors(pvc) == []
    assert urlparse(v["mlflow"]["artifactsDestination"]).scheme in {"s3", "gs", "wasbs"}


@pytest.mark.parametrize("k", [k for k in _kustomizations() if k.kind == "Kustomization"], ids=lambda k: k.id)
def test_kubectl_kustomize_renders_what_the_checks_validated(k):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomize render is not checked (the field-level check still runs)")
    out = subprocess.run([kubectl, "kustomize", str(k.path.parent)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    def key(d: dict) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]
    assert sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key) == sorted(render(k), key=key)


# Tests: Dockerfile and .dockerignore


def test_dockerfile_installs_the_locked_versions():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime", "the runtime image must be the default (last) target"
    runtime = " ".join(stages["runtime"])
    pins = constraints()
    assert re.search(rf'"torch=={re.escape(pins["torch"])}"', runtime) and "--index-url" in runtime
    assert re.search(rf'"torchvision=={re.escape(pins["torchvision"])}"', runtime)
    assert "pip install -c constraints.txt ." in runtime
    base = " ".join(stages["<global>"])
    assert re.search(r"ARG CUDA_BASE=nvidia/cuda:\S+", base)
    py = re.search(r"ARG PYTHON_VERSION=(\S+)", base).group(1)
    assert f">={py}" in (ROOT / "pyproject.toml").read_text()
    server = " ".join(stages["mlflow-server"])
    assert '-c /tmp/constraints.txt "mlflow[auth]"' in server, "the server runs the locked mlflow (= the clients')"


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", "an allow-list keeps .venv, runs and .git out of the build context"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for ins in (i for s in dockerfile_stages().values() for i in s if i.upper().startswith("COPY")):
        sources = [a for a in ins.split()[1:-1] if not a.startswith("--")]
        for src in sources:
            assert src == "." or src in allowed, f"{ins}: {src} is excluded by .dockerignore"
    assert {"nakt_ray", "jobs", "pyproject.toml", "constraints.txt"} <= allowed


# Tests: hardening (issue 18): MLflow authentication, secrets, pod security, NetworkPolicies


def _mlflow_server() -> tuple[dict, dict]:
    pod = one("Deployment", "mlflow").doc["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _secret_ref(c: dict, var: str) -> tuple[str, str] | None:
    for e in c.get("env") or []:
        if e["name"] == var:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref else None
    return None


def _mounted_file(pod: dict, c: dict, path: str) -> str:
    """The text of a file that a container sees at `path` from a mounted ConfigMap of cluster/."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for vm in c.get("volumeMounts") or []:
        if path.startswith(vm["mountPath"].rstrip("/") + "/"):
            cm = (volumes[vm["name"]].get("configMap") or {}).get("name")
            assert cm, f"{vm['mountPath']} is not a ConfigMap"
            return one("ConfigMap", cm).doc["data"][path[len(vm["mountPath"].rstrip("/")) + 1:]]
    raise AssertionError(f"{path} is not in a mounted volume")


def _backend_store_uri(server: dict) -> str:
    return next(a.split("=", 1)[1] for a in server["args"] if a.startswith("--backend-store-uri="))


def test_mlflow_server_image_has_the_database_driver_the_uri_names():
    """SQLAlchemy >= 2.1 opens a bare postgresql:// URI with psycopg 3, older ones with psycopg2: the driver the
    URI resolves to must be the one the server image installs, or the server does not start."""
    scheme = urlparse(_backend_store_uri(_mlflow_server()[1])).scheme
    default = "psycopg" if _version_tuple(constraints()["sqlalchemy"]) >= (2, 1) else "psycopg2"
    driver = scheme.split("+", 1)[1] if "+" in scheme else default
    package = {"psycopg2": r"psycopg2(-binary)?==", "psycopg": r"psycopg(\[binary\])?=="}[driver]
    assert re.search(rf"(^|\s|\"){package}", " ".join(dockerfile_stages()["mlflow-server"])), \
        f"{scheme}:// uses {driver}, which cluster/Dockerfile's mlflow-server stage does not install"


def test_mlflow_server_requires_authentication():
    """MLflow's basic-auth app, its admin and Flask secret key from the Secret, its user store in PostgreSQL (a
    SQLite file in the container would lose the users on every restart and differ between replicas)."""
    pod, server = _mlflow_server()
    args = server.get("args") or []
    app = [a.split("=", 1)[1] for a in args if a.startswith("--app-name=")]
    app += [b for a, b in zip(args, args[1:]) if a == "--app-name"]
    assert app == ["basic-auth"], f"the server runs MLflow's basic-auth app: {args}"
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert (_secret_ref(server, var) or ("", ""))[0] == MLFLOW_AUTH_SECRET, f"{var}: from {MLFLOW_AUTH_SECRET}"
    ini = configparser.ConfigParser()
    ini.read_string(_mounted_file(pod, server, env_value(server, "MLFLOW_AUTH_CONFIG_PATH") or "<unset>"))
    db = urlparse(ini["mlflow"]["database_uri"])
    assert db.scheme.startswith("postgresql") and db.password is None, "the user store: PostgreSQL, password via env"
    assert db.scheme == urlparse(_backend_store_uri(server)).scheme, "one driver for both stores"
    assert ini["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert not {"admin_username", "admin_password"} & set(ini["mlflow"]), "the admin comes from the Secret"
    server_stage = " ".join(dockerfile_stages()["mlflow-server"])
    assert re.search(r'"mlflow\[auth\]"', server_stage) and re.search(r"flask-wtf==\S+", server_stage), \
        "the server image needs MLflow's auth extra (Flask-WTF), pinned"


def test_ray_pods_authenticate_to_mlflow_with_the_secret():
    _, server = _mlflow_server()
    expected = {"MLFLOW_TRACKING_USERNAME": _secret_ref(server, "MLFLOW_AUTH_ADMIN_USERNAME"),
                "MLFLOW_TRACKING_PASSWORD": _secret_ref(server, "MLFLOW_AUTH_ADMIN_PASSWORD")}
    assert None not in expected.values()
    for m in checked_objects():
        for where, spec in ray_cluster_specs(m.doc):
            for group, g in ray_groups(spec):
                for var, ref in expected.items():
                    assert _secret_ref(ray_container(g), var) == ref, f"{m.id} {where}/{group}: {var}"


def test_mlflow_command_line_holds_no_password():
    """`ps` shows a process's arguments to every user of the node: the database password reaches the server as
    PGPASSWORD (libpq reads it when the URI has none), never through $(VAR) expansion into the arguments."""
    pod, server = _mlflow_server()
    for c in containers(one("Deployment", "mlflow").doc["spec"]["template"]):
        assert command_line_errors(c) == [], c["name"]
    backend = _backend_store_uri(server)
    assert urlparse(backend).password is None, backend
    db = one("Deployment", "mlflow-db").doc["spec"]["template"]["spec"]["containers"][0]
    assert _secret_ref(server, "PGPASSWORD") == _secret_ref(db, "POSTGRES_PASSWORD") == ("mlflow-db", "password")


@pytest.mark.parametrize("m", checked_objects(), ids=lambda m: m.id)
def test_nothing_is_exposed_outside_the_cluster(m):
    assert service_exposure_errors(m.doc) == []


@pytest.mark.parametrize("m", checked_objects(), ids=lambda m: m.id)
def test_no_literal_secret(m):
    assert literal_secret_errors(m.doc) == []


@pytest.mark.parametrize("m", checked_objects(), ids=lambda m: m.id)
def test_every_container_runs_non_root_without_capabilities(m):
    assert pod_security_errors(m.doc) == []


def test_runbook_data_loader_runs_non_root():
    overrides = runbook_pod_overrides()
    assert overrides, "the runbook starts a data-loader pod"
    for o in overrides:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "data-loader", "namespace": NAMESPACE}, **o}
        assert k8s_errors(pod) == []
        assert pod_security_errors({"kind": "Deployment", "spec": {"template": {"spec": o["spec"]}}}) == []
    runbook = (CLUSTER / "README.md").read_text()
    assert not re.search(r"exec data-loader -- chown", runbook), "a non-root loader cannot chown; it writes as 1000"


def test_network_policies_deny_ingress_by_default():
    assert default_deny_errors(network_policies()) == []


def test_every_workload_has_its_own_network_policy():
    assert set(RAY_ROLES) | {SUBMITTER_ROLE, "mlflow", "mlflow-db"} <= set(workload_endpoints())
    assert own_policy_errors(network_policies()) == []


def test_network_policies_let_in_only_the_pipeline_flows():
    assert unexpected_flows(network_policies()) == [], "(source, destination, port, allowed?) against the need"


def test_network_policies_let_out_dns_the_database_and_the_object_store():
    assert egress_errors(network_policies()) == []


# ----------------------------------------------------------------------------------------------------------------
# Negative cases: each check must refuse a broken copy (and accept the original it was made from).


def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = _steps(path)
        node = _field(doc, tuple(parents))
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return mutate


_DELETE = object()
_GPU = f"[groupName={GPU_GROUP}]"


def _crd(doc: dict) -> list[str]:
    _require_crds()
    return crd_errors(doc)


def _ray(doc: dict) -> list[str]:
    return ray_errors(doc, Context.build())


def _net(doc: dict) -> list[str]:
    """The NetworkPolicy checks with `doc` in place of the committed policy of the same name."""
    return network_policy_errors([doc if p["metadata"]["name"] == doc["metadata"]["name"] else p
                                  for p in network_policies()])


def _env(container: str, var: dict) -> Callable[[dict], None]:
    """Set (or replace) one env var of the container at fieldPath `container`."""
    def mutate(doc: dict) -> None:
        c = _field(doc, container)
        c["env"] = [e for e in c.get("env") or [] if e["name"] != var["name"]] + [var]
    return mutate


def _args(container: str, arg: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        c = _field(doc, container)
        c["args"] = [a for a in c.get("args") or [] if a.split("=", 1)[0] != arg.split("=", 1)[0]] + [arg]
    return mutate


NEGATIVE_CASES = [
    # (what is broken, kind, name or None, mutation, validator)
    ("RayJob shutdownAfterJobFinishes: 'yes'", "RayJob", None, _set("spec.shutdownAfterJobFinishes", "yes"), _crd),
    ("RayCluster worker group without groupName", "RayCluster", None,
     _set("spec.workerGroupSpecs.0.groupName", _DELETE), _crd),
    ("RayCluster misspelt field (workerGroupSpec)", "RayCluster", None, _set("spec.workerGroupSpec", []), _crd),
    ("RayJob backoffLimit as a string", "RayJob", None, _set("spec.backoffLimit", "1"), _crd),
    ("RayCluster GPU limit that is not a quantity", "RayCluster", None,
     _set(("spec", "workerGroupSpecs", _GPU, "template", "spec", "containers", "0", "resources", "limits",
           "nvidia.com/gpu"), "one"), _crd),
    ("RayJob upscalingMode outside the enum", "RayJob", None,
     _set("spec.rayClusterSpec.autoscalerOptions.upscalingMode", "Eager"), _crd),
    ("Deployment replicas: 'two'", "Deployment", "mlflow", _set("spec.replicas", "two"), k8s_errors),
    ("Deployment unknown container field", "Deployment", "mlflow",
     _set("spec.template.spec.containers.0.imagePolicy", "Always"), k8s_errors),
    ("Service port as a word", "Service", "mlflow", _set("spec.ports.0.port", "http"), k8s_errors),
    ("PVC accessModes as a string", "PersistentVolumeClaim", "nakt-data", _set("spec.accessModes", "ReadWriteMany"),
     k8s_errors),
    ("GPU group without nvidia.com/gpu", "RayCluster", None,
     _set(f"spec.workerGroupSpecs.{_GPU}.template.spec.containers.0.resources.limits", {"cpu": "8"}), _ray),
    ("autoscaling minReplicas > maxReplicas", "RayJob", None,
     _set(f"spec.rayClusterSpec.workerGroupSpecs.{_GPU}.minReplicas", 9), _ray),
    ("autoscaling off", "RayCluster", None, _set("spec.enableInTreeAutoscaling", False), _ray),
    ("unbounded maxReplicas", "RayCluster", None, _set(f"spec.workerGroupSpecs.{_GPU}.maxReplicas", 2147483647), _ray),
    ("entrypoint neither in jobs/ nor planned", "RayJob", None,
     _set("spec.entrypoint", "python jobs/anotate.py --config /configs/run.yaml"), _ray),
    ("entrypoint config not in the ConfigMap", "RayJob", None,
     _set("spec.entrypoint", "python jobs/annotate.py --config /configs/hc18.yaml"), _ray),
    ("RayJob without shutdownAfterJobFinishes", "RayJob", None, _set("spec.shutdownAfterJobFinishes", False), _ray),
    ("RayJob without backoffLimit", "RayJob", None, _set("spec.backoffLimit", _DELETE), _ray),
    ("another image on a worker", "RayJob", None,
     _set("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.image", "rayproject/ray:2.60.0-gpu"),
     _ray),
    ("rayVersion not the locked ray", "RayCluster", None, _set("spec.rayVersion", "2.52.0"), _ray),
    ("MLflow URI to a missing service", "RayCluster", None,
     _set("spec.headGroupSpec.template.spec.containers.0.env.0.value", "http://tracking:5000"), _ray),
    ("RayJob name too long for KubeRay", "RayJob", None, _set("metadata.name", "nakt-" + "x" * 50), _ray),
    # Hardening (issue 18).
    ("Service of type LoadBalancer", "Service", "mlflow", _set("spec.type", "LoadBalancer"), hardening_errors),
    ("Service of type NodePort", "Service", "mlflow-db", _set("spec.type", "NodePort"), hardening_errors),
    ("Ray head Service of type NodePort", "RayCluster", None, _set("spec.headGroupSpec.serviceType", "NodePort"),
     hardening_errors),
    ("literal password in env", "Deployment", "mlflow-db",
     _env("spec.template.spec.containers.0", {"name": "POSTGRES_PASSWORD", "value": "hunter2"}), hardening_errors),
    ("literal MLflow password on a worker", "RayJob", None,
     _env("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0",
          {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}), hardening_errors),
    ("DB password expanded into the server's args", "Deployment", "mlflow",
     _args("spec.template.spec.containers.0", "--backend-store-uri=postgresql://mlflow:$(PGPASSWORD)@mlflow-db/mlflow"),
     hardening_errors),
    ("password option on the command line", "Deployment", "mlflow",
     _args("spec.template.spec.containers.0", "--db-password=hunter2"), hardening_errors),
    ("admin password in the auth ConfigMap", "ConfigMap", "mlflow-auth-config",
     lambda d: d["data"].update({k: v + "admin_password = hunter2\n" for k, v in d["data"].items()}),
     hardening_errors),
    ("secret in the RayJob runtime env", "RayJob", None,
     _set("spec.runtimeEnvYAML", "env_vars:\n  MLFLOW_TRACKING_PASSWORD: hunter2\n"), hardening_errors),
    ("Ray workers as root", "RayJob", None,
     _set(f"spec.rayClusterSpec.workerGroupSpecs.{_GPU}.template.spec.securityContext.runAsUser", 0),
     hardening_errors),
    ("Ray head without runAsNonRoot", "RayCluster", None,
     _set("spec.headGroupSpec.template.spec.securityContext.runAsNonRoot", _DELETE), hardening_errors),
    ("GPU worker keeping its capabilities", "RayCluster", None,
     _set(f"spec.workerGroupSpecs.{_GPU}.template.spec.containers.0.securityContext.capabilities", {"drop": []}),
     hardening_errors),
    ("a capability added back", "Deployment", "mlflow-db",
     _set("spec.template.spec.containers.0.securityContext.capabilities.add", ["NET_RAW"]), hardening_errors),
    ("privilege escalation allowed", "Deployment", "mlflow",
     _set("spec.template.spec.containers.0.securityContext.allowPrivilegeEscalation", True), hardening_errors),
    ("no seccomp profile", "Deployment", "mlflow-db",
     _set("spec.template.spec.securityContext.seccompProfile", _DELETE), hardening_errors),
    ("a privileged init container", "Deployment", "mlflow",
     _set("spec.template.spec.initContainers", [{"name": "init", "image": "busybox:1.37",
                                                 "securityContext": {"privileged": True}}]), hardening_errors),
    ("service-account token on CPU workers", "RayCluster", None,
     _set("spec.workerGroupSpecs.0.template.spec.automountServiceAccountToken", True), hardening_errors),
    ("autoscaler sidecar may escalate", "RayCluster", None,
     _set("spec.autoscalerOptions.securityContext.allowPrivilegeEscalation", True), hardening_errors),
    ("KubeRay's default submitter pod", "RayJob", None, _set("spec.submitterPodTemplate", _DELETE), hardening_errors),
    ("hostNetwork on MLflow", "Deployment", "mlflow", _set("spec.template.spec.hostNetwork", True), hardening_errors),
    ("default deny gone", "NetworkPolicy", "default-deny-ingress",
     _set("spec.podSelector", {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}), _net),
    ("MLflow open to every pod of the namespace", "NetworkPolicy", "mlflow",
     _set("spec.ingress.0.from", [{"podSelector": {}}]), _net),
    ("MLflow open to every namespace", "NetworkPolicy", "mlflow",
     _set("spec.ingress.0.from", [{"namespaceSelector": {}}]), _net),
    ("MLflow ingress on every port", "NetworkPolicy", "mlflow", _set("spec.ingress.0.ports", _DELETE), _net),
    ("MLflow egress to every port", "NetworkPolicy", "mlflow", _set("spec.egress", [{}]), _net),
    ("database egress allowed", "NetworkPolicy", "mlflow-db", _set("spec.policyTypes", ["Ingress"]), _net),
    ("Ray pods reach the database", "NetworkPolicy", "mlflow-db",
     lambda d: d["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {
         "app.kubernetes.io/part-of": "nakt-ray"}}}), _net),
    ("Jobs API from any namespace", "NetworkPolicy", "ray-head-jobs-api",
     _set("spec.ingress.0.from.0.namespaceSelector", {}), _net),
    ("Ray pods cut off from each other", "NetworkPolicy", "ray-cluster", _set("spec.ingress", []), _net),
    ("submitter without DNS", "NetworkPolicy", "ray-job-submitter", _set("spec.egress", _DELETE), _net),
]


@pytest.mark.parametrize("what, kind, name, mutate, check", NEGATIVE_CASES, ids=[c[0] for c in NEGATIVE_CASES])
def test_broken_copies_are_refused(what, kind, name, mutate, check):
    original = one(kind, name).doc
    assert check(original) == [], f"the unbroken {kind} must pass first"
    broken = copy.deepcopy(original)
    mutate(broken)
    assert check(broken) != [], f"{what}: not detected"


VALUES_NEGATIVE_CASES = [
    # (what is broken in values.yaml, mutation, check of the rendered RayJob)
    ("GPU workers sized without a GPU", _set("gpuWorkers.resources", {"limits": {"cpu": "8", "memory": "48Gi"}}),
     _ray),
    ("a toleration with tolerationSeconds in words",
     _set("gpuNodes.tolerations", [{"key": "x", "effect": "NoExecute", "tolerationSeconds": "soon"}]),
     lambda d: [e for _, t in pod_templates(d) for e in pod_template_errors(t)] + _crd(d)),
    ("a node selector value that is not a string", _set("cpuNodes.nodeSelector", {"pool": 3}), _crd),
]


@pytest.mark.parametrize("what, mutate, check", VALUES_NEGATIVE_CASES, ids=[c[0] for c in VALUES_NEGATIVE_CASES])
def test_changed_values_are_checked_where_they_land(what, mutate, check):
    (k,) = [k for k in _kustomizations() if k.path.parent.name == "annotate"]
    values = copy.deepcopy(values_doc())
    (job,) = [d for d in render(k, values) if d["kind"] == "RayJob"]
    assert check(job) == []
    mutate(values)
    (job,) = [d for d in render(k, values) if d["kind"] == "RayJob"]
    assert check(job) != [], f"{what}: not detected after rendering"
