#!/usr/bin/env bash
# Offline checks of deploy/ and the Dockerfile (issue 14). Called by
# scripts/test-all.sh; runs on its own too. Installs what it needs:
#   kubectl      Debian's kubernetes-client 1.20, whose `kubectl kustomize` is
#                kustomize v2.0.3 — the oldest the manifests must work with
#                (a newer kubectl on PATH renders them too)
#   kubernetes-validate (PyPI), strict, against Kubernetes $K8S_VERSION
#   promtool     Debian's prometheus package
# Steps: render every overlay and the base; validate every object against
# the Kubernetes schemas; the policy check (scripts/deploy_policy.py) passes
# the renders and fails the broken fixture (deploy/tests/broken.yaml);
# promtool checks the rules, their unit tests and the configs; the Grafana
# dashboard and the rules use only metrics that exist
# (scripts/check_dashboard.py); the Dockerfile builds what the scripts build
# (a `docker build` only where a Docker daemon runs). Exit 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes version the manifests are validated against, and the
# kubernetes-validate release that ships its schemas.
K8S_VERSION="${K8S_VERSION:-1.34.0}"
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS="${TREEAI_TOOLS:-/var/tmp/treeai-tools}"

step() { printf '\n==> %s\n' "$*"; }
failures=0
fail() {
  printf 'FAILED: %s\n' "$*"
  failures=$((failures + 1))
}

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  fi
}

step "deploy: tools (kubectl of kubernetes-client 1.20, kubernetes-validate $KUBERNETES_VALIDATE_VERSION, promtool)"
# Debian's kubectl (kustomize v2.0.3). Installed as the package when there is
# no kubectl; when another kubectl is on PATH (it would conflict with the
# package), the package is unpacked under $TOOLS instead.
KUBECTL_OLD=""
if command -v kubectl >/dev/null && kubectl version --client 2>/dev/null | grep -q 'GitVersion:"v1\.20\.'; then
  KUBECTL_OLD="$(command -v kubectl)"
elif [ -x "$TOOLS/kubernetes-client/usr/bin/kubectl" ]; then
  KUBECTL_OLD="$TOOLS/kubernetes-client/usr/bin/kubectl"
elif ! command -v kubectl >/dev/null; then
  apt_install kubernetes-client
  KUBECTL_OLD="$(command -v kubectl)"
else
  mkdir -p "$TOOLS/deb"
  (cd "$TOOLS/deb" && rm -f kubernetes-client_*.deb && apt-get download kubernetes-client 2>/dev/null) \
    || { apt-get update -qq && (cd "$TOOLS/deb" && apt-get download kubernetes-client); }
  dpkg-deb -x "$TOOLS"/deb/kubernetes-client_*.deb "$TOOLS/kubernetes-client"
  KUBECTL_OLD="$TOOLS/kubernetes-client/usr/bin/kubectl"
fi
KUBECTL_NEW=""
if command -v kubectl >/dev/null && [ "$(command -v kubectl)" != "$KUBECTL_OLD" ]; then
  KUBECTL_NEW="$(command -v kubectl)"
fi
if [ "$(kubernetes-validate --version 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  python3 -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || python3 -m pip install --quiet --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
command -v promtool >/dev/null || apt_install prometheus
echo "kubectl (kustomize v2.0.3): $KUBECTL_OLD — $("$KUBECTL_OLD" version --client --short 2>/dev/null || "$KUBECTL_OLD" version --client | head -1)"
[ -n "$KUBECTL_NEW" ] && echo "kubectl (newer, also renders): $KUBECTL_NEW — $("$KUBECTL_NEW" version --client 2>/dev/null | head -2 | tr '\n' ' ')"
echo "kubernetes-validate $(kubernetes-validate --version), schemas of Kubernetes $K8S_VERSION"
echo "$(promtool --version 2>&1 | head -1)"

OUT="$(mktemp -d /tmp/treeai-deploy-check.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
# Every kustomization a platform engineer applies: the base (rendered and
# checked, never applied as is), the regions, the drill, and monitoring.
TARGETS=(base)
for d in deploy/overlays/*/; do TARGETS+=("overlays/$(basename "$d")"); done
TARGETS+=(monitoring)

step "deploy: render with kubectl kustomize (v2.0.3${KUBECTL_NEW:+, and the newer kubectl})"
RENDERS=()
for t in "${TARGETS[@]}"; do
  name="${t//\//-}"
  if "$KUBECTL_OLD" kustomize "deploy/$t" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    echo "deploy/$t: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
    RENDERS+=("$name")
  else
    fail "kustomize v2.0.3 cannot render deploy/$t: $(cat "$OUT/$name.err")"
  fi
  if [ -n "$KUBECTL_NEW" ]; then
    if "$KUBECTL_NEW" kustomize "deploy/$t" >"$OUT/$name.new.yaml" 2>"$OUT/$name.new.err"; then
      RENDERS+=("$name.new")
    else
      fail "$KUBECTL_NEW kustomize cannot render deploy/$t: $(grep -v '^# Warning' "$OUT/$name.new.err")"
    fi
  fi
done

step "deploy: validate every object against the Kubernetes $K8S_VERSION schemas (kubernetes-validate --strict)"
for r in "${RENDERS[@]}"; do
  if kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$OUT/$r.yaml"; then
    echo "$r: $(grep -c '^kind:' "$OUT/$r.yaml") objects valid"
  else
    fail "$r does not validate against Kubernetes $K8S_VERSION"
  fi
done
if kubernetes-validate --strict --quiet -k "$K8S_VERSION" deploy/tests/broken.yaml; then
  echo "deploy/tests/broken.yaml: valid (it breaks the policy only)"
else
  fail "the broken fixture must be schema-valid, so that only the policy rejects it"
fi

step "deploy: policy check (limits, non-root, read-only root, no escalation, capabilities, seccomp, cluster wiring)"
for r in "${RENDERS[@]}"; do
  case "$r" in base | base.new) extra=(--allow-placeholders) ;; *) extra=() ;; esac
  printf '%s: ' "$r"
  python3 scripts/deploy_policy.py "${extra[@]}" "$OUT/$r.yaml" || fail "policy check of $r"
done

step "deploy: the policy check fails the broken fixture (deploy/tests/broken.yaml)"
if python3 scripts/deploy_policy.py deploy/tests/broken.yaml >"$OUT/broken.out"; then
  cat "$OUT/broken.out"
  fail "the policy check PASSED the broken fixture"
else
  echo "policy check exits non-zero on the fixture, as it must"
fi
python3 scripts/deploy_policy.py --expect-violations deploy/tests/broken.yaml | tail -1 \
  || fail "a rule the fixture breaks was not reported"

step "prometheus: promtool check rules, test rules, check config"
promtool check rules deploy/prometheus/rules.yml || fail "promtool check rules"
(cd deploy/prometheus && promtool test rules rules.test.yml) || fail "promtool test rules"
promtool check config deploy/prometheus/prometheus-static.yml || fail "promtool check config (static)"
# prometheus.yml names its rules where the ConfigMap is mounted; check it
# with the repository's rules file in their place.
sed 's#/etc/prometheus/rules/treeai-rules.yml#'"$PWD"'/deploy/prometheus/rules.yml#' \
  deploy/prometheus/prometheus.yml >"$OUT/prometheus.yml"
if promtool check config "$OUT/prometheus.yml" >"$OUT/promtool.out" 2>&1; then
  cat "$OUT/promtool.out"
elif grep -q 'field kubernetes_sd_configs not found' "$OUT/promtool.out"; then
  # Debian builds Prometheus without Kubernetes service discovery: check
  # everything else of the file (relabelling included) with a static target.
  echo "note: this promtool has no kubernetes_sd_configs (Debian's build); checking the rest with a static target"
  python3 - "$OUT/prometheus.yml" <<'EOF'
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["treeai-0.treeai-peers.treeai-us-east.svc:8080"]}]
yaml.safe_dump(cfg, open(path, "w"))
EOF
  promtool check config "$OUT/prometheus.yml" || fail "promtool check config (kubernetes)"
else
  cat "$OUT/promtool.out"
  fail "promtool check config (kubernetes)"
fi

step "grafana: the dashboard parses, every panel has a query, every metric exists"
python3 scripts/check_dashboard.py deploy/grafana/treeai-dashboard.json deploy/prometheus/rules.yml \
  || fail "dashboard check"

step "image: the Dockerfile builds the treeai package as the scripts do"
pkg="$(sed -n 's/^name = "\(.*\)"/\1/p' bin/Cargo.toml | head -1)"
grep -q "cargo build --release --locked -p $pkg\b" Dockerfile \
  || fail "the Dockerfile does not run 'cargo build --release --locked -p $pkg' (bin/Cargo.toml's package)"
grep -q '^USER 65532' Dockerfile || fail "the Dockerfile's runtime does not run as the non-root user 65532"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker build -t treeai:check . || fail "docker build"
  docker image ls treeai:check
else
  echo "skipped docker build: no Docker daemon here (the image's size is measured where one runs)"
fi

if [ "$failures" -gt 0 ]; then
  step "deploy checks: $failures FAILED"
  exit 1
fi
step "deploy checks passed"
