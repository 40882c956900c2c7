#!/usr/bin/env python3
"""Policy check of rendered Kubernetes manifests (scripts/check-deploy.sh).

    deploy_policy.py [--allow-placeholders] FILE...      # exit 1 on any violation
    deploy_policy.py --expect-violations FILE...         # exit 0 only if every rule
                                                         # named in the files' "# expect:"
                                                         # lines is violated (the broken
                                                         # fixture, deploy/tests/)

FILE is multi-document YAML, e.g. the output of `kubectl kustomize`. Rules
(each violation is printed as `rule-id: kind/name container: what`):

Every container and initContainer of every workload (Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob):
  limits            cpu and memory limits and requests set
  non-root          runAsNonRoot true (pod or container level), runAsUser not 0
  read-only-rootfs  readOnlyRootFilesystem true
  no-escalation     allowPrivilegeEscalation false
  drop-all          capabilities.drop contains ALL
  seccomp           seccompProfile RuntimeDefault (pod or container level)
  privileged        not privileged; no hostNetwork, hostPID, hostIPC

Objects:
  no-secrets        no Secret objects (secret values never go into git)
  rbac              no ClusterRole(Binding); no "*" in a Role; a Role naming
                    statefulsets names them (resourceNames)
  network-policy    every workload's pods are selected by a NetworkPolicy
  pdb               every StatefulSet has a PodDisruptionBudget

The treeai pipeline (a StatefulSet whose container runs `treeai run`):
  timely-cluster    podManagementPolicy Parallel; serviceName is a headless
                    Service with publishNotReadyAddresses; --processes,
                    --process=auto, --peers from TREEAI_PROCESSES/TREEAI_PEERS;
                    replicas is TREEAI_PROCESSES (or 0); TREEAI_PEERS is either
                    the P pods' addresses <sts>-0.<service>:<timely port>,...
                    or the pattern <sts>-{i}.<service>:<timely port>, which the
                    binary expands to them (then a resize changes replicas and
                    TREEAI_PROCESSES only)
  network-policy    (also) the timely port is admitted from the StatefulSet's
                    own pods, and from nothing else: timely's links are plain
                    TCP without authentication
  probes            liveness on /healthz, readiness on /readyz; the startup
                    budget (startupProbe, else livenessProbe: initialDelay +
                    period x failureThreshold) exceeds the peer wait
                    (TREEAI_PEER_TIMEOUT_MS, --peer-timeout-ms, [cluster]
                    peer_timeout_ms; default 60 s): HTTP starts only after
                    every peer connected and the checkpoint is loaded
  grace             terminationGracePeriodSeconds > shutdown_timeout_ms
  sa-token          automountServiceAccountToken false
  config            treeai.toml in a ConfigMap parses and uses only the fields
                    bin/src/config.rs defines (the binary denies unknown keys)
  placeholders      no ".invalid" left in ConfigMaps (not with
                    --allow-placeholders: the base)
"""

import argparse
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_RS = os.path.join(ROOT, "bin", "src", "config.rs")

WORKLOADS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


class Report:
    def __init__(self):
        self.violations = []

    def add(self, rule, obj, what):
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        ns = obj.get("metadata", {}).get("namespace")
        where = f"{ns}/{name}" if ns else name
        self.violations.append((rule, where, what))


def pod_spec(obj):
    """The pod template's spec and metadata of a workload."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "Pod":
        return spec, obj.get("metadata") or {}
    if kind == "CronJob":
        tpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    else:
        tpl = spec.get("template") or {}
    return tpl.get("spec") or {}, tpl.get("metadata") or {}


def check_containers(obj, report):
    spec, _ = pod_spec(obj)
    psc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            report.add("privileged", obj, f"{flag}: true")
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    if not containers:
        report.add("limits", obj, "no containers found")
    for role, c in containers:
        who = f"{role} {c.get('name')}"
        res = c.get("resources") or {}
        for part in ("limits", "requests"):
            for r in ("cpu", "memory"):
                if not (res.get(part) or {}).get(r):
                    report.add("limits", obj, f"{who}: no {r} in resources.{part}")
        csc = c.get("securityContext") or {}
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        user = csc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True:
            report.add("non-root", obj, f"{who}: runAsNonRoot is not true (pod or container)")
        if user == 0:
            report.add("non-root", obj, f"{who}: runAsUser is 0")
        if csc.get("readOnlyRootFilesystem") is not True:
            report.add("read-only-rootfs", obj, f"{who}: readOnlyRootFilesystem is not true")
        if csc.get("allowPrivilegeEscalation") is not False:
            report.add("no-escalation", obj, f"{who}: allowPrivilegeEscalation is not false")
        drop = [d.upper() for d in ((csc.get("capabilities") or {}).get("drop") or [])]
        if "ALL" not in drop:
            report.add("drop-all", obj, f"{who}: capabilities.drop lacks ALL")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            report.add("seccomp", obj, f"{who}: seccompProfile is {seccomp or 'unset'}, not RuntimeDefault")
        if csc.get("privileged"):
            report.add("privileged", obj, f"{who}: privileged: true")


def selects(selector, labels):
    """Whether a LabelSelector selects `labels` (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ns_of(obj):
    return obj.get("metadata", {}).get("namespace")


# --- treeai.toml against bin/src/config.rs -------------------------------------------------


def config_schema(path=CONFIG_RS):
    """{struct: {field: type}} of the `pub struct`s in config.rs."""
    text = open(path, encoding="utf-8").read()
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", text, re.S):
        fields = {}
        for f in re.finditer(r"^\s*pub (\w+):\s*(.+?),\s*$", m.group(2), re.M):
            fields[f.group(1)] = f.group(2)
        structs[m.group(1)] = fields
    if "FileConfig" not in structs or not structs["FileConfig"]:
        raise SystemExit(f"deploy_policy: cannot read the config structs of {path}")
    return structs


def check_toml(table, struct, structs, path, errors):
    fields = structs[struct]
    for key, value in table.items():
        if key not in fields:
            errors.append(f"unknown key {path}{key} (not in {struct}, bin/src/config.rs)")
            continue
        ty = fields[key]
        if "BTreeMap" in ty or "HashMap" in ty:
            continue
        nested = next((s for s in structs if re.search(rf"\b{s}\b", ty)), None)
        if nested:
            if not isinstance(value, dict):
                errors.append(f"{path}{key} should be a table ({nested})")
            else:
                check_toml(value, nested, structs, f"{path}{key}.", errors)
        elif isinstance(value, dict):
            errors.append(f"{path}{key} is a table but {struct}.{key} is {ty}")


# --- the pipeline's StatefulSet -----------------------------------------------------------


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


PEER_TIMEOUT_MS_DEFAULT = 60000  # bin/src/cluster_args.rs


def probe_budget_s(probe):
    """Seconds a probe tolerates failing from the container's start before it gives up."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def port_admitted(rule_ports, number, name):
    """Whether an ingress rule's `ports` admit TCP `number` (the container port named `name`)."""
    if not rule_ports:
        return True
    for p in rule_ports:
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        port = p.get("port")
        if port is None or port == name:
            return True
        if isinstance(port, int) and number is not None and port <= number <= p.get("endPort", port):
            return True
    return False


def check_timely_ingress(sts, objects, timely_port, report):
    """The timely port: admitted from the StatefulSet's own pods, from nothing else."""
    _, meta = pod_spec(sts)
    labels = meta.get("labels") or {}
    # The pod labels of every other workload in the namespace: a peer selector that
    # matches any of them admits more than this StatefulSet's pods.
    others = [
        pod_spec(o)[1].get("labels") or {}
        for o in objects
        if o.get("kind") in WORKLOADS and o is not sts and ns_of(o) == ns_of(sts)
    ]
    admitted_from_own = False
    for pol in objects:
        if pol.get("kind") != "NetworkPolicy" or ns_of(pol) != ns_of(sts):
            continue
        pspec = pol.get("spec") or {}
        if not selects(pspec.get("podSelector"), labels):
            continue
        if "Ingress" not in (pspec.get("policyTypes") or ["Ingress"]):
            continue
        for i, rule in enumerate(pspec.get("ingress") or []):
            if not port_admitted(rule.get("ports"), timely_port, "timely"):
                continue
            where = f"NetworkPolicy {pol['metadata']['name']} ingress[{i}]"
            peers = rule.get("from")
            if not peers:
                report.add("network-policy", sts, f"{where} admits the timely port {timely_port} from anywhere")
                admitted_from_own = True  # (its own pods too: the one violation is enough)
                continue
            for peer in peers:
                sel = peer.get("podSelector")
                narrow = (
                    sel is not None
                    and "namespaceSelector" not in peer
                    and "ipBlock" not in peer
                    and bool(sel.get("matchLabels") or sel.get("matchExpressions"))
                    and selects(sel, labels)
                    and not any(selects(sel, other) for other in others)
                )
                if not narrow:
                    report.add(
                        "network-policy",
                        sts,
                        f"{where} admits the timely port {timely_port} from {peer!r}, not only this "
                        "StatefulSet's pods (timely's links are unauthenticated TCP)",
                    )
                else:
                    admitted_from_own = True
    if not admitted_from_own:
        report.add("network-policy", sts, f"no NetworkPolicy admits the timely port {timely_port} from its own pods")


def check_treeai_statefulset(sts, objects, configs, report):
    spec = sts.get("spec") or {}
    pspec, _ = pod_spec(sts)
    c = next((c for c in pspec.get("containers") or [] if (c.get("args") or [None])[0] == "run"), None)
    if c is None:
        return
    if spec.get("podManagementPolicy") != "Parallel":
        report.add("timely-cluster", sts, "podManagementPolicy is not Parallel")
    svc_name = spec.get("serviceName")
    svc = next(
        (o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == svc_name and ns_of(o) == ns_of(sts)),
        None,
    )
    if svc is None:
        report.add("timely-cluster", sts, f"serviceName {svc_name!r} is not a Service in the render")
    else:
        if (svc.get("spec") or {}).get("clusterIP") != "None":
            report.add("timely-cluster", sts, f"Service {svc_name} is not headless")
        if (svc.get("spec") or {}).get("publishNotReadyAddresses") is not True:
            report.add("timely-cluster", sts, f"Service {svc_name} lacks publishNotReadyAddresses: true")
    args = c.get("args") or []
    for want in ("--processes=$(TREEAI_PROCESSES)", "--process=auto", "--peers=$(TREEAI_PEERS)"):
        if want not in args:
            report.add("timely-cluster", sts, f"args lack {want}")
    processes, peers = env_value(c, "TREEAI_PROCESSES"), env_value(c, "TREEAI_PEERS")
    timely_port = next((p.get("containerPort") for p in c.get("ports") or [] if p.get("name") == "timely"), None)
    if timely_port is None:
        report.add("timely-cluster", sts, "the container has no port named timely")
    check_timely_ingress(sts, objects, timely_port, report)
    try:
        n = int(processes)
    except (TypeError, ValueError):
        report.add("timely-cluster", sts, f"TREEAI_PROCESSES {processes!r} is not a number")
        n = None
    if n is not None:
        name = sts["metadata"]["name"]
        want = ",".join(f"{name}-{i}.{svc_name}:{timely_port}" for i in range(n))
        pattern = f"{name}-{{i}}.{svc_name}:{timely_port}"
        if peers not in (want, pattern):
            report.add(
                "timely-cluster",
                sts,
                f"TREEAI_PEERS {peers!r} is neither the {n} pods' addresses {want!r} nor the pattern {pattern!r}",
            )
        replicas = spec.get("replicas", 1)
        if replicas not in (0, n):
            report.add("timely-cluster", sts, f"replicas {replicas} differs from TREEAI_PROCESSES {n} (and is not 0)")
    live = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
    ready = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
    if live != "/healthz":
        report.add("probes", sts, f"livenessProbe path is {live!r}, not /healthz")
    if ready != "/readyz":
        report.add("probes", sts, f"readinessProbe path is {ready!r}, not /readyz")
    # HTTP answers only once every peer connected (up to the peer timeout) and the
    # checkpoint is loaded: the probe that guards the start must outlast the peer wait.
    ns_configs = [cfg for (ns, _), cfg in configs.items() if ns == ns_of(sts)]
    timeout_ms, source = PEER_TIMEOUT_MS_DEFAULT, "the default"
    for cfg in ns_configs:
        if isinstance((cfg.get("cluster") or {}).get("peer_timeout_ms"), int):
            timeout_ms, source = cfg["cluster"]["peer_timeout_ms"], "treeai.toml [cluster] peer_timeout_ms"
    env_timeout = env_value(c, "TREEAI_PEER_TIMEOUT_MS")
    flag_timeout = next((a.split("=", 1)[1] for a in args if a.startswith("--peer-timeout-ms=")), None)
    for value, what in ((env_timeout, "TREEAI_PEER_TIMEOUT_MS"), (flag_timeout, "--peer-timeout-ms")):
        if value is None:
            continue
        try:
            timeout_ms, source = int(value), what
        except ValueError:
            report.add("timely-cluster", sts, f"{what} {value!r} is not a number")
    guard = c.get("startupProbe") or c.get("livenessProbe")
    if guard is not None:
        which = "startupProbe" if c.get("startupProbe") else "livenessProbe (no startupProbe)"
        if probe_budget_s(guard) * 1000 <= timeout_ms:
            report.add(
                "probes",
                sts,
                f"{which} gives up after {probe_budget_s(guard)} s, within the peer wait "
                f"{timeout_ms} ms ({source}) and a restore",
            )
    if pspec.get("automountServiceAccountToken") is not False:
        report.add("sa-token", sts, "the pipeline's pods mount a service account token")
    grace = pspec.get("terminationGracePeriodSeconds", 30)
    for cm_name, cfg in configs.items():
        if cm_name[0] != ns_of(sts):
            continue
        timeout_ms = cfg.get("shutdown_timeout_ms", 25000)
        if grace * 1000 <= timeout_ms:
            report.add("grace", sts, f"terminationGracePeriodSeconds {grace} s <= shutdown_timeout_ms {timeout_ms}")


# --- everything -----------------------------------------------------------------------------


def check(objects, report, allow_placeholders):
    structs = config_schema()
    configs = {}
    for o in objects:
        kind = o.get("kind")
        if kind == "ConfigMap":
            data = o.get("data") or {}
            for key, value in data.items():
                if key == "treeai.toml":
                    try:
                        cfg = tomllib.loads(value)
                    except tomllib.TOMLDecodeError as e:
                        report.add("config", o, f"treeai.toml: {e}")
                        continue
                    errors = []
                    check_toml(cfg, "FileConfig", structs, "", errors)
                    for e in errors:
                        report.add("config", o, f"treeai.toml: {e}")
                    configs[(ns_of(o), o["metadata"]["name"])] = cfg
                if not allow_placeholders and ".invalid" in str(value):
                    report.add("placeholders", o, f"{key} holds a placeholder: {value!r}")
        if kind == "Secret":
            report.add("no-secrets", o, "a Secret in the manifests: reference Secrets, create them out of git")
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            report.add("rbac", o, "cluster-wide RBAC; use a namespaced Role")
        if kind in ("Role", "ClusterRole"):
            for rule in o.get("rules") or []:
                for field in ("apiGroups", "resources", "verbs"):
                    if "*" in (rule.get(field) or []):
                        report.add("rbac", o, f"'*' in {field}")
                if "statefulsets" in (rule.get("resources") or []) and not rule.get("resourceNames"):
                    report.add("rbac", o, "statefulsets without resourceNames")
    for o in objects:
        if o.get("kind") in WORKLOADS:
            check_containers(o, report)
            _, meta = pod_spec(o)
            labels = meta.get("labels") or {}
            policies = [p for p in objects if p.get("kind") == "NetworkPolicy" and ns_of(p) == ns_of(o)]
            if not any(selects((p.get("spec") or {}).get("podSelector"), labels) for p in policies):
                report.add("network-policy", o, "no NetworkPolicy selects its pods")
        if o.get("kind") == "StatefulSet":
            _, meta = pod_spec(o)
            labels = meta.get("labels") or {}
            pdbs = [p for p in objects if p.get("kind") == "PodDisruptionBudget" and ns_of(p) == ns_of(o)]
            if not any(selects((p.get("spec") or {}).get("selector"), labels) for p in pdbs):
                report.add("pdb", o, "no PodDisruptionBudget selects its pods")
            check_treeai_statefulset(o, objects, configs, report)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--allow-placeholders", action="store_true", help="the base: .invalid placeholders are fine")
    ap.add_argument(
        "--expect-violations", action="store_true", help="succeed only if every rule of the '# expect:' lines fires"
    )
    a = ap.parse_args()
    objects, expected = [], set()
    for f in a.files:
        text = open(f, encoding="utf-8").read()
        for m in re.finditer(r"^# expect:(.*)$", text, re.M):
            expected.update(m.group(1).split())
        objects += [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]
    report = Report()
    check(objects, report, a.allow_placeholders)
    for rule, where, what in report.violations:
        print(f"  {rule}: {where}: {what}")
    fired = {r for r, _, _ in report.violations}
    if a.expect_violations:
        missing = sorted(expected - fired)
        if not expected:
            print("deploy_policy: --expect-violations but the files name no '# expect:' rules")
            return 1
        if missing:
            print(f"deploy_policy: the broken fixture was NOT caught by: {', '.join(missing)}")
            return 1
        print(f"deploy_policy: the broken fixture fails as expected ({len(report.violations)} violations of {len(fired)} rules)")
        return 0
    if report.violations:
        print(f"deploy_policy: {len(report.violations)} violation(s) in {len(objects)} objects")
        return 1
    print(f"deploy_policy: {len(objects)} objects pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
