#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes/, run by check.sh (which puts kubernetes-validate and
its dependencies, PyYAML and jsonschema, on PYTHONPATH).

    validate.py [--rendered FILE] [--rules-out FILE]

1. Every manifest that kustomization.yaml lists, and the ConfigMap its configMapGenerator makes
   from modserve.toml, is validated with kubernetes-validate (strict: unknown fields are
   errors) against the oldest and newest Kubernetes versions in K8S_VERSIONS. A kind it has no
   schema for is an error, except the prometheus-operator CRDs (PodMonitor, PrometheusRule):
   kubernetes-validate carries no CRD schemas, so those are checked here against a
   hand-written subset of the operator's schema (CRD_SCHEMAS: the fields these manifests may
   use, unknown fields rejected).
2. With --rendered, the same for the output of `kubectl kustomize`, which must hold the same
   objects.
3. Cross-checks between the files: selectors and pod labels, port names and numbers, probe
   ports and health service names, config mount and paths, the Secret mount and
   admin.token_file, the writable emptyDir and the disagreement log, shutdown timings, the
   Dockerfile's paths, every config key in modserve.toml and in the docs against the structs
   modserve parses (src/config/file.rs), every metric name against src/metrics.rs.
4. The PrometheusRule's groups equal those of deploy/prometheus/*.yml (parsed); with
   --rules-out they are written there as a plain rules file for `promtool check rules`.
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Oldest and newest Kubernetes minor versions the manifests are validated against. gRPC probes
# are GA from 1.27, PodDisruptionBudget.unhealthyPodEvictionPolicy exists from 1.26.
K8S_VERSIONS = ["1.29", "1.37"]
LABELS = {"app.kubernetes.io/name": "modserve"}
CONFIG_KEY = "modserve.toml"
RULE_SOURCES = ["deploy/prometheus/modserve-rules.yml", "deploy/prometheus/modserve-alerts.yml"]
# Where names of config keys and metrics are checked against the code.
DOCS = ["docs/deploying.md", "SECURITY.md", "Dockerfile"]

errors: list[str] = []


def error(msg: str) -> None:
    errors.append(msg)


# ---------------------------------------------------------------------------------------------
# CRD subset schemas (prometheus-operator, monitoring.coreos.com/v1)

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "jobLabel": {"type": "string"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                # The operator wants the container port's *name* here.
                                "port": {"type": "string", "minLength": 1},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array", "items": {"type": "object"}},
                                "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": DURATION,
                                "query_offset": DURATION,
                                "limit": {"type": "integer"},
                                "labels": STRING_MAP,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                        "properties": {
                                            "record": {"type": "string", "minLength": 1},
                                            "alert": {"type": "string", "minLength": 1},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": DURATION,
                                            "keep_firing_for": DURATION,
                                            "labels": STRING_MAP,
                                            "annotations": STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_object(doc: dict, where: str) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            error(f"{where}: {name_of(doc)}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        return
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            error(f"{where}: {name_of(doc)} is not valid for Kubernetes {version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            error(f"{where}: {e.message} (neither a built-in kind nor a CRD this script knows)")


# ---------------------------------------------------------------------------------------------
# Loading


def load_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load_base() -> tuple[dict, list[tuple[str, dict]], str]:
    kust = yaml.safe_load((HERE / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kust.get("resources", [])
    on_disk = sorted(p.name for p in HERE.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")
    for name in on_disk:
        if name not in listed:
            error(f"deploy/kubernetes/{name}: not listed in kustomization.yaml resources")
    docs = []
    for name in listed:
        path = HERE / name
        if not path.exists():
            error(f"kustomization.yaml: resource {name} does not exist")
            continue
        docs += [(name, d) for d in load_docs(path)]
    generators = kust.get("configMapGenerator", [])
    config_text = ""
    for g in generators:
        options = g.get("options", {})
        if g.get("name") == "modserve-config" and not options.get("disableNameSuffixHash"):
            error("kustomization.yaml: modserve-config needs options.disableNameSuffixHash: true, so a config edit "
                  "updates the ConfigMap in place (a reload) instead of making a new one (a restart)")
        data = {}
        for f in g.get("files", []):
            key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (HERE / src).read_text(encoding="utf-8")
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": g["name"], "labels": options.get("labels", {})}, "data": data}
        docs.append(("kustomization.yaml configMapGenerator", cm))
        if g.get("name") == "modserve-config":
            config_text = data.get(CONFIG_KEY, "")
    if not config_text:
        error(f"kustomization.yaml: no configMapGenerator `modserve-config` with a file {CONFIG_KEY}")
    return kust, docs, config_text


def one(docs: list[tuple[str, dict]], kind: str, name: str | None = None) -> dict:
    found = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        error(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(found)}")
        return {}
    return found[0]


# ---------------------------------------------------------------------------------------------
# What the code accepts


def config_schema() -> dict[str, dict[str, str]]:
    """The serde structs the config file is read into (`RawConfig` in src/config/file.rs and
    the `Raw*` structs it names, wherever under src/ they live): name -> {field: type}."""
    structs = {}
    # src/config/ first: on a name defined twice, the config's own struct wins.
    paths = sorted((ROOT / "src").rglob("*.rs"), key=lambda p: ("/config" not in str(p), str(p)))
    for path in paths:
        src = path.read_text(encoding="utf-8")
        for m in re.finditer(r"struct (Raw\w+) \{(.*?)\n\}", src, re.S):
            fields = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(\w+): ([^,\n]+),", m.group(2), re.M)
            structs.setdefault(m.group(1), dict(fields))
    if "RawConfig" not in structs:
        error("src/: cannot find `struct RawConfig` (src/config/file.rs); update deploy/kubernetes/validate.py")
    return structs


def check_toml_keys(table: dict, struct: str, structs: dict, where: str) -> None:
    fields = structs.get(struct, {})
    for key, value in table.items():
        if key not in fields:
            error(f"{where}{key}: not a key modserve accepts (struct {struct} in src/config/file.rs)")
            continue
        ty = fields[key]
        inner = re.findall(r"Raw\w+", ty)
        if not inner:
            continue
        if ty.startswith("BTreeMap"):
            for name, sub in value.items():
                check_toml_keys(sub, inner[0], structs, f"{where}{key}.{name}.")
        elif ty.startswith("Vec"):
            for i, sub in enumerate(value):
                check_toml_keys(sub, inner[0], structs, f"{where}{key}[{i}].")
        else:
            check_toml_keys(value, inner[0], structs, f"{where}{key}.")


def resolve_key(dotted: str, structs: dict) -> bool:
    """True when e.g. `shadow.disagreement_log.path` names a field of the config structs."""
    struct = "RawConfig"
    for part in dotted.split("."):
        ty = structs.get(struct, {}).get(part)
        if ty is None:
            return False
        inner = re.findall(r"Raw\w+", ty)
        if not inner:
            return True
        struct = inner[0]
    return True


def metric_names() -> set[str]:
    src = (ROOT / "src/metrics.rs").read_text(encoding="utf-8")
    return set(re.findall(r'pub const \w+: &str = "(modserve_\w+)";', src))


def recorded_names() -> set[str]:
    names = set()
    for s in RULE_SOURCES:
        for g in yaml.safe_load((ROOT / s).read_text(encoding="utf-8"))["groups"]:
            names |= {r["record"] for r in g["rules"] if "record" in r}
    return names


def check_names_in_text(path: str, text: str, structs: dict, metrics: set[str], recorded: set[str]) -> None:
    for n, line in enumerate(text.splitlines(), 1):
        if "TODO(tls)" in line:
            continue
        for m in re.finditer(r"\bmodserve_[a-z0-9_]*[a-z0-9]\b", line):
            name = re.sub(r"_(bucket|sum|count)$", "", m.group(0))
            if name not in metrics:
                error(f"{path}:{n}: {m.group(0)}: no such metric in src/metrics.rs")
        for m in re.finditer(r"\bmodserve:[a-z0-9_:]+[a-z0-9]\b", line):
            if m.group(0) not in recorded:
                error(f"{path}:{n}: {m.group(0)}: no such recording rule in deploy/prometheus/")
        # Config keys written as `table.key` (only the tables modserve has).
        # File names (`shadow.md`) and wildcards (`shadow.breaker_*`) are skipped.
        for m in re.finditer(r"(?<![\w./-])((?:server|admin|limits|batching|shadow)\.[a-z_]+(?:\.[a-z_]+)?)(?![\w*])", line):
            key = m.group(1)
            if key.rsplit(".", 1)[1] in ("md", "rs", "toml", "yml", "yaml", "json", "py", "sh"):
                continue
            if not resolve_key(key, structs):
                error(f"{path}:{n}: {key}: not a config key modserve accepts (src/config/file.rs)")


# ---------------------------------------------------------------------------------------------
# Cross-checks


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    if not m:
        error(f"modserve.toml: cannot read duration {duration!r} here (use ms, s or m)")
        return 0.0
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cross_check(docs: list[tuple[str, dict]], config_text: str, structs: dict) -> None:
    dep = one(docs, "Deployment", "modserve")
    if not dep:
        return
    spec = dep["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], pod_labels) or not matches(LABELS, pod_labels):
        error("deployment.yaml: selector or pod labels do not match")
    if "replicas" in spec:
        error("deployment.yaml: remove spec.replicas: the HPA owns the replica count, and every apply would reset it")
    podspec = pod["spec"]
    (c,) = podspec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for need in ("grpc", "grpc-admin", "metrics"):
        if need not in ports:
            error(f"deployment.yaml: no container port named {need}")

    # Selectors of every other object select the pods.
    for where, d in docs:
        kind = d["kind"]
        sel = None
        if kind == "Service":
            sel = d["spec"]["selector"]
            for p in d["spec"]["ports"]:
                if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                    error(f"{where}: {name_of(d)} targetPort {p['targetPort']} is not a container port")
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            sel = d["spec"]["selector"]["matchLabels"]
        elif kind == "NetworkPolicy":
            sel = d["spec"]["podSelector"]["matchLabels"]
            for rule in d["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if p["port"] not in ports and p["port"] not in ports.values():
                        error(f"{where}: {name_of(d)} port {p['port']} is not a container port")
        elif kind == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
                error(f"{where}: scaleTargetRef {ref} is not the Deployment")
        if sel is not None and not matches(sel, pod_labels):
            error(f"{where}: {name_of(d)} selector {sel} does not select the modserve pods")
        if kind == "PodMonitor":
            for ep in d["spec"]["podMetricsEndpoints"]:
                if ep["port"] != "metrics":
                    error(f"{where}: PodMonitor scrapes port {ep['port']}, not `metrics`")
    for t in podspec.get("topologySpreadConstraints", []):
        if not matches(t["labelSelector"]["matchLabels"], pod_labels):
            error("deployment.yaml: a topologySpreadConstraint does not select the modserve pods")

    # Probes: native gRPC on the gRPC port, on the health names modserve reports.
    app_rs = (ROOT / "src/app.rs").read_text(encoding="utf-8")
    served = {""} | set(re.findall(r'MODERATION_SERVICE: &str = "([^"]+)"', app_rs))
    if len(served) != 2:
        error("src/app.rs: cannot find MODERATION_SERVICE; update deploy/kubernetes/validate.py")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c.get(probe, {}).get("grpc")
        if not g:
            error(f"deployment.yaml: {probe} is not a gRPC probe")
            continue
        if g["port"] != ports.get("grpc"):
            error(f"deployment.yaml: {probe} probes port {g['port']}, not the gRPC port {ports.get('grpc')}")
        if g.get("service", "") not in served:
            error(f"deployment.yaml: {probe} asks for health service {g.get('service')!r}; modserve reports {sorted(served)}")

    # Security context.
    psc, csc = podspec.get("securityContext", {}), c.get("securityContext", {})
    if not psc.get("runAsNonRoot") or not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation", True):
        error("deployment.yaml: want runAsNonRoot, readOnlyRootFilesystem and allowPrivilegeEscalation: false")

    # The config file and the volumes.
    args = c.get("args", [])
    if "--config" not in args:
        error("deployment.yaml: the container does not pass --config")
        return
    config_path = Path(args[args.index("--config") + 1])
    volumes = {v["name"]: v for v in podspec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    m = mounts.get(str(config_path.parent))
    if not m or volumes[m["name"]].get("configMap", {}).get("name") != "modserve-config" or config_path.name != CONFIG_KEY:
        error(f"deployment.yaml: --config {config_path} is not the key {CONFIG_KEY} of ConfigMap modserve-config mounted at {config_path.parent}")
    for mount in c["volumeMounts"]:
        if "subPath" in mount or "subPathExpr" in mount:
            error(f"deployment.yaml: volume {mount['name']} uses subPath; such mounts never see ConfigMap or Secret updates")

    def mount_for(path: str) -> tuple[dict, dict] | tuple[None, None]:
        best = None
        for mp, mount in mounts.items():
            if path.startswith(mp.rstrip("/") + "/") and (best is None or len(mp) > len(best)):
                best = mp
        return (mounts[best], volumes[mounts[best]["name"]]) if best else (None, None)

    try:
        cfg = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as e:
        error(f"deploy/kubernetes/modserve.toml: {e}")
        return
    check_toml_keys(cfg, "RawConfig", structs, "deploy/kubernetes/modserve.toml: ")
    server, admin = cfg.get("server", {}), cfg.get("admin", {})
    for key, value, port in (
        ("server.grpc_listen", server.get("grpc_listen", ""), "grpc"),
        ("server.metrics_listen", server.get("metrics_listen", ""), "metrics"),
        ("admin.listen", admin.get("listen", ""), "grpc-admin"),
    ):
        host, _, num = value.rpartition(":")
        if host not in ("0.0.0.0", "[::]"):
            error(f"modserve.toml: {key} = {value!r}: bind 0.0.0.0 (or [::]) in a pod")
        if not num.isdigit() or int(num) != ports.get(port):
            error(f"modserve.toml: {key} = {value!r} does not match containerPort {port} ({ports.get(port)})")
    # The admin token: a file in the Secret volume.
    token = admin.get("token_file")
    if not token:
        error("modserve.toml: admin.token_file is not set")
    else:
        mount, vol = mount_for(token)
        secret = (vol or {}).get("secret")
        if not secret:
            error(f"modserve.toml: admin.token_file {token} is not inside a mounted Secret")
        else:
            rel = token[len(mount["mountPath"].rstrip("/")) + 1:]
            items = [i["path"] for i in secret.get("items", [])]
            if items and rel not in items:
                error(f"modserve.toml: admin.token_file {token}: the Secret volume has no item {rel!r} ({items})")
    # Writable paths: only the disagreement log's emptyDir.
    log = cfg.get("shadow", {}).get("disagreement_log")
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    if log:
        mount, vol = mount_for(log["path"])
        if not vol or "emptyDir" not in vol or mount.get("readOnly"):
            error(f"modserve.toml: shadow.disagreement_log.path {log['path']} is not on a writable emptyDir mount")
        else:
            bound = log.get("max_files", 5) * log.get("max_file_bytes", 64 << 20)
            limit = vol["emptyDir"].get("sizeLimit", "")
            mi = int(limit[:-2]) if limit.endswith("Mi") else 0
            if mi * (1 << 20) <= bound:
                error(f"deployment.yaml: emptyDir sizeLimit {limit!r} is not above the log's max_files * max_file_bytes ({bound} bytes)")
    for m in writable:
        if not (log and log["path"].startswith(m["mountPath"].rstrip("/") + "/")):
            error(f"deployment.yaml: volume mount {m['mountPath']} is writable but nothing in the config writes there")
    # Shutdown timings.
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else None
    if pre_s is None:
        error("deployment.yaml: want a preStop `sleep N`")
    else:
        grace = podspec.get("terminationGracePeriodSeconds", 30)
        need = pre_s + seconds(server.get("drain_delay", "0s")) + seconds(server.get("shutdown_grace", "30s")) + 10
        if grace < need:
            error(f"deployment.yaml: terminationGracePeriodSeconds {grace} < preStop {pre_s:g}s + server.drain_delay + server.shutdown_grace + 10s = {need:g}s")
    # Paths that the image must hold.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    ort = server.get("onnxruntime_lib", "")
    ort_in_image = re.search(r"COPY --from=builder \S+ (/opt/modserve/lib/libonnxruntime\.so\.)\$\{ORT_VERSION\}", dockerfile)
    ort_version = re.search(r"ARG ORT_VERSION=(\S+)", dockerfile)
    if not (ort_in_image and ort_version and ort == ort_in_image.group(1) + ort_version.group(1)):
        error(f"modserve.toml: server.onnxruntime_lib {ort!r} is not where the Dockerfile puts the library")
    if "COPY models/ /opt/modserve/models/" not in dockerfile:
        error("Dockerfile: expected `COPY models/ /opt/modserve/models/`")
    for name, model in cfg.get("models", {}).items():
        path = model.get("path", "")
        if not path.startswith("/opt/modserve/models/"):
            error(f"modserve.toml: models.{name}.path {path!r} is not under /opt/modserve/models/")
        elif not (ROOT / "models" / path.removeprefix("/opt/modserve/models/") / "manifest.toml").exists():
            error(f"modserve.toml: models.{name}.path {path!r}: no such package in models/")
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, re.M)
    if not user or int(user.group(1)) != psc.get("runAsUser"):
        error("Dockerfile: USER does not match the Deployment's runAsUser")
    exposed = set(re.findall(r"^EXPOSE (.*)$", dockerfile, re.M)[0].split()) if "EXPOSE" in dockerfile else set()
    if exposed != {str(p) for p in ports.values()}:
        error(f"Dockerfile: EXPOSE {sorted(exposed)} differs from the container ports {sorted(ports.values())}")
    image = c["image"].rsplit(":", 1)
    if len(image) != 2 or image[1] in ("", "latest"):
        error(f"deployment.yaml: image {c['image']!r} needs a version tag")


def check_rules(docs: list[tuple[str, dict]], rules_out: str | None) -> None:
    rule = one(docs, "PrometheusRule", "modserve")
    if not rule:
        return
    want = []
    for s in RULE_SOURCES:
        want += yaml.safe_load((ROOT / s).read_text(encoding="utf-8"))["groups"]
    if rule["spec"]["groups"] != want:
        error("prometheusrule.yaml: its groups differ from deploy/prometheus/*.yml; run gen_prometheusrule.py")
    if rules_out:
        with open(rules_out, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False, width=1000)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rendered", help="output of `kubectl kustomize deploy/kubernetes`, validated too")
    ap.add_argument("--rules-out", help="write the PrometheusRule's groups here as a plain rules file")
    args = ap.parse_args()

    _, docs, config_text = load_base()
    for where, doc in docs:
        validate_object(doc, where)
    count = len(docs)
    if args.rendered:
        rendered = load_docs(Path(args.rendered))
        for doc in rendered:
            validate_object(doc, "kubectl kustomize output")
        if sorted(map(name_of, rendered)) != sorted(name_of(d) for _, d in docs):
            error(f"kubectl kustomize output holds {sorted(map(name_of, rendered))}, the files {sorted(name_of(d) for _, d in docs)}")
    structs = config_schema()
    cross_check(docs, config_text, structs)
    check_rules(docs, args.rules_out)
    metrics, recorded = metric_names(), recorded_names()
    for rel in DOCS + [f"deploy/kubernetes/{p.name}" for p in sorted(HERE.iterdir()) if p.suffix in (".yaml", ".toml")]:
        path = ROOT / rel
        if path.exists():
            check_names_in_text(rel, path.read_text(encoding="utf-8"), structs, metrics, recorded)
        elif rel in DOCS:
            error(f"{rel}: missing")

    if errors:
        for e in errors:
            print(f"ERROR {e}", file=sys.stderr)
        print(f"validate.py: {len(errors)} error(s)", file=sys.stderr)
        return 1
    kinds = ", ".join(sorted({d['kind'] for _, d in docs}))
    print(f"validate.py: {count} objects OK against Kubernetes {' and '.join(K8S_VERSIONS)} "
          f"(strict; PodMonitor and PrometheusRule against the subset schemas here): {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
