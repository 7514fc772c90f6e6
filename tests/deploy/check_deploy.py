#!/usr/bin/env python3
"""Check every deploy artefact with the tool made for it, and check that the
artefacts agree with each other and with the gateway's config.

- Dockerfile: hadolint, and the facts the image promises (multi-stage,
  non-root, HEALTHCHECK through `ballast probe`, STOPSIGNAL SIGTERM).
- deploy/compose: the compose-spec JSON schema (and `docker compose config`
  when a Docker client with compose is present); the files it mounts exist
  and the gateway's config names its backends.
- deploy/prometheus: `promtool check config`, `promtool check rules`,
  `promtool test rules`.
- deploy/k8s: every manifest, the ConfigMap kustomize generates and the
  example Secret against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict); the ServiceMonitor and PrometheusRule
  against prometheus-operator's CRD schemas; the Deployment against
  ballast.toml (probes, drain timing, config mount, Secret keys, ports); the
  HPA against the prometheus-adapter rule; the PrometheusRule against
  deploy/prometheus/alerts.yml.

Run by scripts/check-deploy (which installs the tools) from scripts/test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TOOLS = ROOT / "target" / "deploy-tools"
KUBERNETES_VERSION = "1.31.0"


class Failed(Exception):
    pass


def run(cmd: list[str], cwd: Path = ROOT, stdin: str | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        raise Failed(f"{' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def seconds(duration: str) -> float:
    """A Ballast duration string ("250ms", "30s", "10m") in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------- Dockerfile


def dockerfile_problems(text: str) -> list[str]:
    """What the image promises, read from its Dockerfile."""
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            lines.append(raw)
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
    problems = []
    froms = [a for i, a in instr if i == "FROM"]
    if len(froms) < 2:
        problems.append("not a multi-stage build (one FROM)")
    final = max(n for n, (i, _) in enumerate(instr) if i == "FROM")
    runtime = instr[final:]
    users = [a.strip() for i, a in runtime if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage does not switch to a non-root USER")
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    if not health or "probe" not in health[-1]:
        problems.append("no HEALTHCHECK through `ballast probe` (/healthz)")
    if ("STOPSIGNAL", "SIGTERM") not in runtime:
        problems.append("no STOPSIGNAL SIGTERM")
    if not any(i == "ENV" and "BALLAST_CONFIG=/etc/ballast/ballast.toml" in a for i, a in runtime):
        problems.append("the config path /etc/ballast/ballast.toml is not set (ENV BALLAST_CONFIG)")
    return problems


def check_dockerfile() -> None:
    print(run(["hadolint", "Dockerfile"]).strip() or "hadolint: Dockerfile is clean")
    problems = dockerfile_problems((ROOT / "Dockerfile").read_text())
    ignore = (ROOT / ".dockerignore").read_text().split()
    if "target" not in ignore:
        problems.append(".dockerignore does not leave target/ out of the build context")
    if problems:
        raise Failed("Dockerfile: " + "; ".join(problems))


# ------------------------------------------------------------------- compose


def compose_schema() -> dict:
    """The compose-spec JSON schema, as shipped in docker-compose's wheel on
    PyPI (fetched once into target/deploy-tools)."""
    cached = TOOLS / "compose_spec.json"
    if not cached.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(TOOLS),
             "docker-compose==1.29.2"])
        wheel = next(TOOLS.glob("docker_compose-1.29.2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            cached.write_bytes(z.read("compose/config/compose_spec.json"))
    return json.loads(cached.read_text())


def compose_problems(compose: dict, compose_dir: Path, gateway: dict) -> list[str]:
    problems = []
    services = compose.get("services", {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not (compose_dir / source).exists():
                problems.append(f"service {name} mounts {source}, which does not exist")
    for pool in gateway.get("pool", []):
        for server in pool.get("servers", []):
            host = server["addr"].rsplit(":", 1)[0]
            if host not in services:
                problems.append(f"pool {pool['name']} names {host}, which is not a compose service")
    for needed in ("ballast", "prometheus", "grafana"):
        if needed not in services:
            problems.append(f"no {needed} service")
    return problems


def check_compose() -> None:
    path = DEPLOY / "compose" / "compose.yaml"
    compose = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft201909Validator(compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    if errors:
        raise Failed(f"{path}: not valid against the compose-spec schema:\n  " + "\n  ".join(errors))
    print(f"{path.relative_to(ROOT)}: valid (compose-spec schema)")
    gateway = tomllib.loads((DEPLOY / "compose" / "ballast.toml").read_text())
    problems = compose_problems(compose, path.parent, gateway)
    if problems:
        raise Failed(f"{path}: " + "; ".join(problems))
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        run([docker, "compose", "-f", str(path), "config", "--quiet"])
        print(f"{path.relative_to(ROOT)}: docker compose config accepts it")
    else:
        print("docker compose is not installed here: checked by its schema only")


# ---------------------------------------------------------------- prometheus


def check_prometheus() -> None:
    prom = DEPLOY / "prometheus"
    run(["promtool", "check", "config", "prometheus.yml"], cwd=prom)
    run(["promtool", "check", "rules", "alerts.yml"], cwd=prom)
    print(run(["promtool", "test", "rules", "alerts.test.yml"], cwd=prom).strip())


# ---------------------------------------------------------------- kubernetes


def kustomize_configmaps(kustomization: dict, base: Path) -> list[dict]:
    """The ConfigMaps kustomize's configMapGenerator makes (without the
    hash suffix it adds to their names)."""
    out = []
    for gen in kustomization.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, src = f.partition("=")
            src = src or key
            data[Path(key).name] = (base / src).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": gen["name"], "namespace": kustomization.get("namespace")},
                    "data": data})
    return out


def container(deploy: dict) -> dict:
    return deploy["spec"]["template"]["spec"]["containers"][0]


def deployment_problems(deploy: dict, gateway: dict, configmap_name: str) -> list[str]:
    """The Deployment against the config it runs."""
    problems = []
    pod = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin_port = int(gateway["admin"]["listen"].rsplit(":", 1)[1])
    if ports.get("admin") != admin_port:
        problems.append(f"container port admin is {ports.get('admin')}, admin.listen says {admin_port}")
    listen_ports = {int(a.rsplit(":", 1)[1]) for a in gateway["server"]["listen"]}
    if ports.get("http") not in listen_ports:
        problems.append(f"container port http {ports.get('http')} is not in server.listen")
    if not gateway["admin"]["listen"].startswith(("0.0.0.0:", "[::]:")):
        problems.append("admin.listen is not on all interfaces: probes cannot reach it")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = c.get(probe, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") not in ("admin", admin_port):
            problems.append(f"{probe} is not GET {path} on the admin port")
    if "resources" not in c or "cpu" not in c["resources"].get("requests", {}):
        problems.append("no CPU request (the HPA's utilisation is relative to it)")
    drain = seconds(gateway["server"].get("drain_delay", "2s"))
    grace = seconds(gateway["server"].get("grace_period", "5s"))
    command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) != 2 or command[0] != "sleep":
        problems.append("preStop is not a sleep")
        pre_stop = 0.0
    else:
        pre_stop = float(command[1])
        if pre_stop != drain:
            problems.append(f"preStop sleeps {pre_stop:g} s, server.drain_delay is {drain:g} s")
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if termination <= pre_stop + drain + grace:
        problems.append(f"terminationGracePeriodSeconds {termination} does not exceed preStop + "
                        f"drain_delay + grace_period ({pre_stop + drain + grace:g} s)")
    env = {e["name"]: e for e in c.get("env", [])}
    config_path = env.get("BALLAST_CONFIG", {}).get("value", "/etc/ballast/ballast.toml")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == configmap_name]
    if not mounted or str(Path(config_path).parent) != mounts.get(mounted[0]):
        problems.append(f"the ConfigMap {configmap_name} is not mounted where BALLAST_CONFIG points ({config_path})")
    for pool in gateway.get("pool", []):
        var = pool.get("api_key_env")
        if var and "secretKeyRef" not in env.get(var, {}).get("valueFrom", {}):
            problems.append(f"pool {pool['name']} reads {var}, which no Secret provides")
    sock = gateway["server"].get("upgrade_sock", "/tmp/ballast-upgrade.sock")
    if c.get("securityContext", {}).get("readOnlyRootFilesystem") and \
            str(Path(sock).parent) not in mounts.values():
        problems.append(f"the root filesystem is read-only and {Path(sock).parent} (upgrade_sock) is not a volume")
    return problems


def hpa_problems(hpa: dict, adapter_rules: list[dict]) -> list[str]:
    """The seed's autoscaling numbers, and a Pods metric the adapter serves."""
    problems = []
    spec = hpa["spec"]
    if (spec.get("minReplicas"), spec.get("maxReplicas")) != (2, 10):
        problems.append(f"replicas {spec.get('minReplicas')}..{spec.get('maxReplicas')}, not 2..10")
    metrics = spec.get("metrics", [])
    cpu = [m for m in metrics if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    if not cpu or cpu[0]["resource"]["target"] != {"type": "Utilization", "averageUtilization": 70}:
        problems.append("no CPU utilisation target of 70 %")
    pods = [m for m in metrics if m["type"] == "Pods"]
    served = {r["name"]["as"] for r in adapter_rules if "ballast_requests_total" in r["seriesQuery"]}
    if not pods:
        problems.append("no Pods metric for requests per second")
    else:
        name = pods[0]["pods"]["metric"]["name"]
        if name not in served:
            problems.append(f"the Pods metric {name} is not served by the prometheus-adapter rules ({served})")
        if pods[0]["pods"]["target"] != {"type": "AverageValue", "averageValue": "500"}:
            problems.append("the requests-per-second target is not 500 per pod")
    return problems


def check_k8s() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[tuple[str, dict]] = []
    for res in kustomization["resources"]:
        for d in load_yaml_docs(K8S / res):
            docs.append((res, d))
    for cm in kustomize_configmaps(kustomization, K8S):
        docs.append(("configMapGenerator", cm))
    for d in load_yaml_docs(K8S / "secret.example.yaml"):
        docs.append(("secret.example.yaml", d))
    operator = yaml.safe_load((K8S / "prometheus-operator" / "kustomization.yaml").read_text())
    custom = []
    for res in operator["resources"]:
        if res == "..":
            continue
        custom.extend(load_yaml_docs(K8S / "prometheus-operator" / res))

    for source, d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise Failed(f"{source}: {name} is not valid Kubernetes {KUBERNETES_VERSION}: "
                         f"{e.message} at {'/'.join(map(str, e.path))}") from e
        print(f"{source}: {name} valid (Kubernetes {KUBERNETES_VERSION} OpenAPI schema, strict)")

    shutil.copy(ROOT / "tests" / "deploy" / "validate_crs.mjs", TOOLS / "validate_crs.mjs")
    print(run(["node", str(TOOLS / "validate_crs.mjs")], cwd=TOOLS, stdin=json.dumps(custom)).strip())

    by_kind = {d["kind"]: d for _, d in docs}
    gateway = tomllib.loads((K8S / "ballast.toml").read_text())
    configmap = kustomization["configMapGenerator"][0]["name"]
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    chart = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    problems = deployment_problems(by_kind["Deployment"], gateway, configmap)
    problems += hpa_problems(by_kind["HorizontalPodAutoscaler"], rules)
    if chart != rules:
        problems.append("prometheus-adapter/values.yaml and rules.yaml carry different rules")
    prometheus_rule = next(d for d in custom if d["kind"] == "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    if prometheus_rule["spec"]["groups"] != alerts["groups"]:
        problems.append("prometheus-operator/prometheusrule.yaml differs from deploy/prometheus/alerts.yml")
    monitor = next(d for d in custom if d["kind"] == "ServiceMonitor")
    service = by_kind["Service"]
    if monitor["spec"]["endpoints"][0]["port"] not in {p["name"] for p in service["spec"]["ports"]}:
        problems.append("the ServiceMonitor scrapes a port the Service does not have")
    if problems:
        raise Failed("deploy/k8s: " + "; ".join(problems))
    print("deploy/k8s: the Deployment, HPA, adapter rules, ServiceMonitor and PrometheusRule agree "
          "with ballast.toml and each other")


def main() -> int:
    failed = False
    for check in (check_dockerfile, check_compose, check_prometheus, check_k8s):
        print(f"== {check.__name__.removeprefix('check_')}")
        try:
            check()
        except Failed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
