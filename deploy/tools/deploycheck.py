"""Checks of deploy/ that no off-the-shelf linter makes; run by
scripts/check-deploy.sh with .tools/deploy-venv/bin/python (PyYAML and
pycep, checkov's Bicep parser, come with checkov).

    python deploy/tools/deploycheck.py alerts
    python deploy/tools/deploycheck.py promotion
    python deploy/tools/deploycheck.py prometheusrule [--write]
    python deploy/tools/deploycheck.py consistency RENDERED_DIR
    python deploy/tools/deploycheck.py split RENDERED.yaml OUT_CORE.yaml OUT_CRDS.yaml
    python deploy/tools/deploycheck.py crds RENDERED_CRDS.yaml...
    python deploy/tools/deploycheck.py commands

Each prints what it checked and exits 1 with every problem found.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENVS = ["dev", "staging", "production"]
AKS_ENVS = ["staging", "production"]
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
PROMETHEUS_RULE = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
BICEP = DEPLOY / "azure" / "main.bicep"
BUILT_IN_ROLES = {
    "eventHubsDataSender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "eventHubsDataReceiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

problems: list[str] = []


def fail(message: str) -> None:
    problems.append(message)


def finish(what: str) -> None:
    if problems:
        for p in problems:
            print(f"FAIL {what}: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {what}")


def config(env: str) -> dict:
    return tomllib.loads((DEPLOY / "config" / f"{env}.toml").read_text())


# ----------------------------------------------------------------- alerts


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_alerts() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    anchors = {
        github_anchor(line[3:])
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in tests:
        for t in case.get("alert_rule_test", []):
            target = firing if t.get("exp_alerts") else quiet
            target[t["alertname"]] = target.get(t["alertname"], 0) + 1
    names = [r["alert"] for r in rules if "alert" in r]
    for name in names:
        rule = next(r for r in rules if r.get("alert") == name)
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        if not url.split("#")[0].endswith("deploy/RUNBOOK.md"):
            fail(f"{name}: runbook_url {url!r} does not point into deploy/RUNBOOK.md")
        elif anchor not in anchors:
            fail(f"{name}: runbook_url anchor #{anchor} is no heading of deploy/RUNBOOK.md")
        if name not in firing:
            fail(f"{name}: no promtool case in alerts_test.yml where it fires")
        if "severity" not in rule.get("labels", {}):
            fail(f"{name}: no severity label")
    for name in set(firing) | set(quiet):
        if name not in names:
            fail(f"alerts_test.yml tests {name}, which alerts.yml does not define")
    finish(f"alerts ({len(names)} rules, each with a runbook section and a firing test case)")


# -------------------------------------------------------------- promotion


def split_env_lines(text: str) -> tuple[list[str], list[str]]:
    shared, keys = [], []
    for line in text.splitlines():
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        if "# env" in line:
            keys.append(t.split("=")[0].strip())
        else:
            shared.append(line)
    return shared, keys


def check_promotion() -> None:
    """The rule of tests/suite/deploy.rs, here too so check-deploy.sh
    catches it without a cargo build."""
    texts = {e: (DEPLOY / "config" / f"{e}.toml").read_text() for e in ENVS}
    dev_shared, dev_keys = split_env_lines(texts["dev"])
    for env in ENVS[1:]:
        shared, keys = split_env_lines(texts[env])
        if keys != dev_keys:
            fail(f"{env}.toml marks other lines `# env` than dev.toml")
        for i, (a, b) in enumerate(zip(dev_shared, shared)):
            if a != b:
                fail(f"{env}.toml shared line {i} differs from dev.toml: {b!r} vs {a!r}")
                break
        if len(shared) != len(dev_shared):
            fail(f"{env}.toml has other shared lines than dev.toml")
    finish("promotion (configs differ only in lines marked # env)")


# ------------------------------------------------------- PrometheusRule


def prometheus_rule_text() -> str:
    body = ALERTS.read_text()
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    spec = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return (
        "# GENERATED from deploy/prometheus/alerts.yml by\n"
        "# `python3 deploy/tools/deploycheck.py prometheusrule --write`: edit the\n"
        "# rules there (promtool tests them), never here.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: hubflow\n"
        "spec:\n"
        f"{spec}\n"
    )


def check_prometheus_rule(write: bool) -> None:
    want = prometheus_rule_text()
    if write:
        PROMETHEUS_RULE.write_text(want)
        print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
        return
    have = PROMETHEUS_RULE.read_text() if PROMETHEUS_RULE.exists() else ""
    if have != want:
        fail(
            "deploy/k8s/base/prometheusrule.yaml is not alerts.yml: run "
            "`python3 deploy/tools/deploycheck.py prometheusrule --write`"
        )
    elif yaml.safe_load(have)["spec"] != yaml.safe_load(ALERTS.read_text()):
        fail("prometheusrule.yaml's spec does not load as alerts.yml")
    finish("prometheusrule (k8s PrometheusRule == deploy/prometheus/alerts.yml)")


# ------------------------------------------------ rendered manifests: split


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def split(rendered: Path, core_out: Path, crds_out: Path) -> None:
    docs = load_docs(rendered)
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    crds = [d for d in docs if d["kind"] in CRD_KINDS]
    core_out.write_text(yaml.safe_dump_all(core, sort_keys=False))
    crds_out.write_text(yaml.safe_dump_all(crds, sort_keys=False))


# ---------------------------------------------- CRDs: structural validation


def check_crds(paths: list[Path]) -> None:
    """ServiceMonitor and PrometheusRule are not in the Kubernetes schemas
    kubernetes-validate carries; check the fields the Prometheus Operator
    needs, with the types its CRDs declare."""
    alerts = yaml.safe_load(ALERTS.read_text())
    seen = 0
    for path in paths:
        for doc in load_docs(path):
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            where = f"{path.name}: {kind}/{name}"
            seen += 1
            if doc.get("apiVersion") != "monitoring.coreos.com/v1":
                fail(f"{where}: apiVersion {doc.get('apiVersion')!r}")
            if not isinstance(name, str) or not name:
                fail(f"{where}: metadata.name missing")
            spec = doc.get("spec")
            if not isinstance(spec, dict):
                fail(f"{where}: spec missing")
                continue
            if kind == "ServiceMonitor":
                allowed = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
                if set(spec) - allowed:
                    fail(f"{where}: unknown spec fields {sorted(set(spec) - allowed)}")
                if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
                    fail(f"{where}: spec.selector.matchLabels must be a map")
                endpoints = spec.get("endpoints")
                if not isinstance(endpoints, list) or not endpoints:
                    fail(f"{where}: spec.endpoints must be a non-empty list")
                    continue
                ep_fields = {"port", "path", "interval", "scrapeTimeout", "authorization", "scheme"}
                for ep in endpoints:
                    if set(ep) - ep_fields:
                        fail(f"{where}: unknown endpoint fields {sorted(set(ep) - ep_fields)}")
                    if not isinstance(ep.get("port"), str):
                        fail(f"{where}: endpoint port must be the Service port's name")
                    for d in ("interval", "scrapeTimeout"):
                        if d in ep and not re.fullmatch(r"\d+[smh]", str(ep[d])):
                            fail(f"{where}: endpoint {d} {ep[d]!r} is not a duration")
                    auth = ep.get("authorization")
                    if auth is not None:
                        cred = auth.get("credentials", {})
                        if auth.get("type") != "Bearer" or set(cred) != {"name", "key"}:
                            fail(f"{where}: authorization must be Bearer from a Secret key")
            elif kind == "PrometheusRule":
                if spec != alerts:
                    fail(f"{where}: spec is not deploy/prometheus/alerts.yml")
                for g in spec.get("groups", []):
                    if not isinstance(g.get("name"), str) or not isinstance(g.get("rules"), list):
                        fail(f"{where}: group needs name and rules")
                    for r in g.get("rules", []):
                        if not isinstance(r.get("expr"), str) or not ("alert" in r or "record" in r):
                            fail(f"{where}: rule {r} needs expr and alert/record")
            else:
                fail(f"{where}: not a known custom resource")
    finish(f"crds ({seen} ServiceMonitor/PrometheusRule objects checked structurally)")


# --------------------------------------------------------------- consistency


def bicep() -> dict:
    from pycep import BicepParser

    return BicepParser().parse(file_path=BICEP)


def accessor(node) -> tuple[str, str] | None:
    """`a.b` in pycep's JSON, as ("a", "b")."""
    try:
        ops = node["operator"]["operands"]
        if node["operator"]["type"] == "property_accessor" and isinstance(ops["operand_2"], str):
            return ops["operand_1"], ops["operand_2"]
    except (KeyError, TypeError):
        pass
    return None


def body(res: dict) -> dict:
    """A resource's own config, under an `if (...)` condition or not."""
    cfg = res["config"]
    while "config" in cfg and ("condition" in cfg or "loop_type" in cfg or "loop" in cfg):
        cfg = cfg["config"]
    return cfg


def role_assignments(template: dict) -> list[tuple[str, str, str]]:
    """(scope resource, role var, principal resource) of every role assignment."""
    out = []
    for name, res in template["resources"].items():
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        cfg = body(res)
        props = cfg["properties"]
        role = accessor(props["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
        principal = props["principalId"]["operator"]["operands"]["operand_1"]
        if role is None or role[0] != "roles":
            fail(f"role assignment {name}: the role must be one of var roles")
            continue
        out.append((cfg["scope"], role[1], principal))
    return out


def param_default(template: dict, name: str):
    return template["parameters"][name].get("default")


def check_consistency(rendered_dir: Path) -> None:
    template = bicep()
    variables = {k: v["value"] for k, v in template["variables"].items()}
    resources = template["resources"]

    # The identity's roles: exactly the three built-in ones Hubflow needs.
    if variables.get("roles") != BUILT_IN_ROLES:
        fail(f"var roles is {variables.get('roles')}, want the built-in {BUILT_IN_ROLES}")
    want = {
        ("ingestHub", "eventHubsDataSender", "identity"),
        ("ingestHub", "eventHubsDataReceiver", "identity"),
        ("landedHub", "eventHubsDataSender", "identity"),
        ("landedHub", "eventHubsDataReceiver", "identity"),
        ("storage", "storageBlobDataContributor", "identity"),
    }
    have = set(role_assignments(template))
    mine = {a for a in have if a[2] == "identity"}
    if mine != want:
        fail(f"Hubflow's identity has roles {sorted(mine)}, want exactly {sorted(want)}")
    if have - mine != {("landedHub", "eventHubsDataSender", "topic")}:
        fail(f"other role assignments than the Event Grid topic's Data Sender on landed: {sorted(have - mine)}")
    if body(resources["ingestHub"])["name"] != "ingestHubName" or body(resources["landedHub"])["name"] != "landedHubName":
        fail("the hubs must be named by the ingestHubName / landedHubName parameters")
    sub = body(resources["blobCreated"])["properties"]
    if sub["filter"]["includedEventTypes"] != ["Microsoft.Storage.BlobCreated"]:
        fail("the Event Grid subscription must deliver Microsoft.Storage.BlobCreated only")
    dest = sub["deliveryWithResourceIdentity"]["destination"]
    if dest["endpointType"] != "EventHub" or accessor(dest["properties"]["resourceId"]) != ("landedHub", "id"):
        fail("the Event Grid subscription must deliver to hub landed")
    if body(resources["landedGroup"])["name"] != "landedConsumerGroup" or variables.get("landedConsumerGroup") != "transform":
        fail("hub landed needs consumer group `transform` (the notice listeners read it)")
    if body(resources["ingestGroup"])["name"] != "ingestConsumerGroup":
        fail("hub ingest's consumer group must be the ingestConsumerGroup parameter")
    if body(resources["namespace"])["properties"].get("disableLocalAuth") is not True:
        fail("the Event Hubs namespace must disable local (SAS) auth: Hubflow uses Entra ID only")

    for env in ENVS:
        cfg = config(env)
        params = {
            k: v["value"]
            for k, v in json.loads((DEPLOY / "azure" / f"{env}.parameters.json").read_text())["parameters"].items()
        }
        unknown = set(params) - set(template["parameters"])
        if unknown:
            fail(f"{env}.parameters.json sets unknown parameters {sorted(unknown)}")

        def p(name: str):
            return params.get(name, param_default(template, name))

        where = f"{env}"
        if p("environment") != env:
            fail(f"{where}: parameter environment is {p('environment')!r}")
        fqdn = f"{p('eventHubsNamespaceName')}.servicebus.windows.net"
        if cfg["event_hubs"]["fully_qualified_namespace"] != fqdn:
            fail(f"{where}: event_hubs.fully_qualified_namespace is not {fqdn}")
        if cfg["pipeline"]["namespace"] != fqdn:
            fail(f"{where}: pipeline.namespace is not {fqdn}")
        url = f"https://{p('storageAccountName')}.blob.core.windows.net"
        if cfg["azure_blob"]["account_url"].rstrip("/") != url:
            fail(f"{where}: azure_blob.account_url is not {url}")
        if cfg["event_hubs"]["ingest_hub"] != p("ingestHubName") or cfg["event_hubs"]["landed_hub"] != p("landedHubName"):
            fail(f"{where}: hub names differ between the config and the template")
        if cfg["pipeline"]["consumer_group"] != p("ingestConsumerGroup"):
            fail(f"{where}: pipeline.consumer_group is not the ingestConsumerGroup parameter")
        storage = cfg["storage"]
        containers = [storage["raw_container"], storage["curated_container"], storage["state_container"], storage["dead_letter_container"]]
        if sorted(containers) != sorted(variables["containerNames"]):
            fail(f"{where}: containers {containers} are not the template's {variables['containerNames']}")
        if variables["rawContainer"] != storage["raw_container"]:
            fail(f"{where}: the Event Grid filter's container is not [storage] raw_container")
        event_grid = cfg["transform"]["notices"] == "event_grid"
        if bool(p("eventGridNotices")) != event_grid:
            fail(f"{where}: eventGridNotices={p('eventGridNotices')} but notices = {cfg['transform']['notices']!r}")
        creds = {cfg["azure_blob"]["auth"]["credential"], cfg["event_hubs"]["auth"]["credential"]}
        want_cred = "workload_identity" if env in AKS_ENVS else "managed_identity"
        if creds != {want_cred}:
            fail(f"{where}: credentials {sorted(creds)}, want {want_cred} (where it runs)")
        if bool(p("workloadIdentity")) != (want_cred == "workload_identity"):
            fail(f"{where}: workloadIdentity={p('workloadIdentity')} does not match credential {want_cred}")

    # The AKS environments: what the rendered manifests say against the config.
    for env in AKS_ENVS:
        cfg = config(env)
        docs = load_docs(rendered_dir / f"{env}.yaml")
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        where = f"k8s {env}"
        sts = by_kind["StatefulSet"][0]
        pod = sts["spec"]["template"]
        c = pod["spec"]["containers"][0]
        sa = by_kind["ServiceAccount"][0]
        ns = sts["metadata"]["namespace"]
        template_ns, template_sa = param_default(template, "serviceAccountNamespace"), param_default(template, "serviceAccountName")
        if (ns, sa["metadata"]["name"], pod["spec"]["serviceAccountName"]) != (template_ns, template_sa, template_sa):
            fail(f"{where}: service account {ns}/{sa['metadata']['name']} is not the federated subject {template_ns}/{template_sa}")
        if pod["metadata"]["labels"].get("azure.workload.identity/use") != "true":
            fail(f"{where}: pod label azure.workload.identity/use: \"true\" missing")
        if not re.fullmatch(r"[0-9a-f-]{36}", sa["metadata"].get("annotations", {}).get("azure.workload.identity/client-id", "")):
            fail(f"{where}: service account has no azure.workload.identity/client-id")
        if not cfg["cluster"]["enabled"] or sts["spec"]["replicas"] < 2:
            fail(f"{where}: {sts['spec']['replicas']} replicas with cluster.enabled={cfg['cluster']['enabled']}")
        listen = cfg["admin"]["listen"]
        port = int(listen.rsplit(":", 1)[1])
        if listen.rsplit(":", 1)[0] != "0.0.0.0" or c["ports"][0]["containerPort"] != port:
            fail(f"{where}: admin.listen {listen} is not reachable on containerPort {c['ports'][0]['containerPort']}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                fail(f"{where}: {probe} is not GET {path}")
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        deadline = cfg["admin"]["shutdown_deadline_secs"]
        if grace < pre_stop + deadline + 10:
            fail(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {deadline} + 10")
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        if str(cfg["pipeline"]["data_dir"]) not in mounts:
            fail(f"{where}: data_dir {cfg['pipeline']['data_dir']} is not a mounted volume (read-only root)")
        config_arg = c["args"][c["args"].index("--config") + 1]
        if str(Path(config_arg).parent) not in mounts:
            fail(f"{where}: --config {config_arg} is not in a mounted volume")
        cm = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"].startswith("hubflow-config"))
        if cm["data"].get(Path(config_arg).name) != (DEPLOY / "config" / f"{env}.toml").read_text():
            fail(f"{where}: the ConfigMap is not deploy/config/{env}.toml")
        env_names = {e["name"] for e in c.get("env", [])}
        wanted = set(re.findall(r'env = "([A-Z0-9_]+)"', (DEPLOY / "config" / f"{env}.toml").read_text()))
        if wanted - env_names:
            fail(f"{where}: the config reads {sorted(wanted - env_names)} from the environment, the pod does not set them")
        sm = by_kind["ServiceMonitor"][0]
        svc = by_kind["Service"][0]
        if sm["spec"]["endpoints"][0]["port"] not in {p["name"] for p in svc["spec"]["ports"]}:
            fail(f"{where}: the ServiceMonitor's port is not a port of Service {svc['metadata']['name']}")
        if svc["metadata"]["name"] != "hubflow":
            fail(f"{where}: HubflowDown matches job=\"hubflow\": the Service must be named hubflow")
        if "PodDisruptionBudget" not in by_kind or "PrometheusRule" not in by_kind:
            fail(f"{where}: PodDisruptionBudget or PrometheusRule missing")
    finish("consistency (Bicep template and parameters, configs, rendered manifests)")


# ------------------------------------------------------------------ commands


def command_lines() -> list[tuple[str, str]]:
    """(where, command line) of every hubflow command the artefacts run."""
    found = []
    docker = (ROOT / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", docker, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", docker, re.M).group(1))
    found.append(("Dockerfile ENTRYPOINT+CMD", " ".join(entry + cmd)))
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", docker, re.M | re.S)
    found.append(("Dockerfile HEALTHCHECK", " ".join(json.loads(health.group(1)))))
    sts = yaml.safe_load((DEPLOY / "k8s" / "base" / "statefulset.yaml").read_text())
    c = sts["spec"]["template"]["spec"]["containers"][0]
    found.append(("statefulset args", " ".join(["/usr/local/bin/hubflow"] + c["args"])))
    unit = (DEPLOY / "systemd" / "hubflow.service").read_text()
    for key in ("ExecStartPre", "ExecStart"):
        found.append((f"hubflow.service {key}", re.search(rf"^{key}=(.*)$", unit, re.M).group(1)))
    return found


def check_commands() -> None:
    listed = {
        line.strip()
        for line in (DEPLOY / "cli-commands.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for where, line in command_lines():
        if line not in listed:
            fail(f"{where} runs `{line}`, which deploy/cli-commands.txt does not list")
    for line in listed:
        if not line.startswith("/usr/local/bin/hubflow "):
            fail(f"cli-commands.txt: `{line}` does not start with /usr/local/bin/hubflow")
    finish(f"commands ({len(listed)} hubflow command lines listed for the Rust test)")


def main(argv: list[str]) -> None:
    if not argv:
        print(__doc__)
        sys.exit(2)
    cmd, args = argv[0], argv[1:]
    if cmd == "alerts":
        check_alerts()
    elif cmd == "promotion":
        check_promotion()
    elif cmd == "prometheusrule":
        check_prometheus_rule(write="--write" in args)
    elif cmd == "split":
        split(Path(args[0]), Path(args[1]), Path(args[2]))
    elif cmd == "crds":
        check_crds([Path(a) for a in args])
    elif cmd == "consistency":
        check_consistency(Path(args[0]))
    elif cmd == "commands":
        check_commands()
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
