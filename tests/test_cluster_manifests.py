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
- Negative cases: mutated copies of the manifests that each check must refuse.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
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
HAND_MADE_SECRETS = frozenset({"mlflow-db", "nakt-object-store", "nakt-ray-auth"})
NAMESPACE = "nakt"
CPU_GROUP, GPU_GROUP = "cpu-workers", "gpu-workers"
MAX_WORKERS_PER_GROUP = 64          # "sensible bounds": a typo such as 400 GPU workers is refused
RUNTIME_IMAGE_NAME = "registry.example.com/nakt/nakt-ray"
MLFLOW_IMAGE_NAME = "registry.example.com/nakt/nakt-mlflow"
MAX_RAYCLUSTER_NAME, MAX_RAYJOB_NAME = 53, 47      # KubeRay's MaxRayClusterNameLength, MaxRayJobNameLength
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
VALUES_KIND = "NaktValues"

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
    assert "-c /tmp/constraints.txt mlflow" in server, "the MLflow server runs the locked mlflow (= the clients')"


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", "an allow-list keeps .venv, runs and .git out of the build context"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for ins in (i for s in dockerfile_stages().values() for i in s if i.upper().startswith("COPY")):
        sources = [a for a in ins.split()[1:-1] if not a.startswith("--")]
        for src in sources:
            assert src == "." or src in allowed, f"{ins}: {src} is excluded by .dockerignore"
    assert {"nakt_ray", "jobs", "pyproject.toml", "constraints.txt"} <= allowed


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
