#!/usr/bin/env bash
# Every linter and validator over the deployment artefacts: deploy/, the
# Dockerfile, the pipelines and every YAML file. Installs nothing (run
# scripts/install-deploy-tools.sh first), needs no network and no cargo
# build, and gives each step a time limit; exits 1 if any step fails.
#
#   bash scripts/check-deploy.sh
#
# Steps: yamllint (all YAML, .yamllint); shellcheck (the deploy scripts);
# promtool check + test rules; deploycheck alerts (runbook section and a
# firing test per rule), promotion (# env rule), prometheusrule (the
# PrometheusRule is alerts.yml), commands (deploy/cli-commands.txt);
# kubectl kustomize of staging and production; kubernetes-validate --strict
# of every rendered core object; structural checks of the ServiceMonitor and
# PrometheusRule (no schema ships for them); deploycheck consistency (Bicep
# template and parameters vs configs vs manifests; the Bicep is parsed with
# pycep, checkov's parser: the Bicep CLI is a GitHub download, not in a
# registry); hadolint; actionlint; checkov (Dockerfile, Bicep, rendered
# Kubernetes, GitHub Actions, Azure Pipelines); systemd-analyze security of
# the unit (exposure at most 3.0).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
venv=$root/.tools/deploy-venv
bin=$venv/bin
K8S_VERSION=${K8S_VERSION:-1.32.0}  # the oldest AKS minor the manifests must load on
STEP_TIMEOUT=${STEP_TIMEOUT:-300}

missing=()
for tool in yamllint checkov kubernetes-validate kubectl hadolint actionlint shellcheck python; do
    [ -x "$bin/$tool" ] || missing+=("$tool")
done
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd-analyze)
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}: run bash scripts/install-deploy-tools.sh" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PATH="$bin:$PATH"
# checkov: no telemetry, no downloads of guidelines or policies.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false LOG_LEVEL=WARNING

passed=0
failed=0
failures=()
step() {
    local name=$1
    shift
    local start=$SECONDS
    local run=("$@")
    # A function of this script runs in a child bash (timeout needs a program).
    if declare -F "$1" >/dev/null; then run=(bash -c "$1"); fi
    if timeout "$STEP_TIMEOUT" "${run[@]}" >"$tmp/step.log" 2>&1; then
        passed=$((passed + 1))
        printf 'ok   %-28s %3ss\n' "$name" $((SECONDS - start))
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL %-28s %3ss\n' "$name" $((SECONDS - start))
        sed 's/^/    /' "$tmp/step.log" | tail -n 60
    fi
}

render() {
    mkdir -p "$tmp/k8s"
    for env in staging production; do
        KUBECTL=$bin/kubectl deploy/k8s/render.sh "$env" >"$tmp/k8s/$env.yaml" || return 1
        python deploy/tools/deploycheck.py split "$tmp/k8s/$env.yaml" \
            "$tmp/$env.core.yaml" "$tmp/$env.crds.yaml" || return 1
    done
    ls -l "$tmp/k8s"
}

checkov_all() {
    checkov --quiet --compact --skip-download --output cli \
        -f Dockerfile -f deploy/azure/main.bicep -d "$tmp/k8s" \
        -d .github/workflows -f deploy/pipelines/azure-pipelines.yml \
        -f deploy/pipelines/hot-change.azure-pipelines.yml \
        --framework dockerfile bicep kubernetes github_actions azure_pipelines
}

systemd_security() {
    systemd-analyze security --offline=yes --threshold=30 deploy/systemd/hubflow.service | tail -n 1
}

export tmp bin
export -f render checkov_all systemd_security

shell_scripts=(scripts/check-deploy.sh scripts/lib.sh scripts/install-*.sh scripts/test.sh
    deploy/systemd/hubflow-restart.sh deploy/k8s/render.sh deploy/pipelines/*.sh)

step yamllint yamllint --strict .
# -x: the install scripts source scripts/lib.sh.
step shellcheck shellcheck -x "${shell_scripts[@]}"
step "promtool check rules" sh -c 'cd deploy/prometheus && promtool check rules alerts.yml'
step "promtool test rules" sh -c 'cd deploy/prometheus && promtool test rules alerts_test.yml'
step "alerts: runbooks, tests" python deploy/tools/deploycheck.py alerts
step "configs: promotion rule" python deploy/tools/deploycheck.py promotion
step "PrometheusRule in sync" python deploy/tools/deploycheck.py prometheusrule
step "cli-commands.txt" python deploy/tools/deploycheck.py commands
step "kustomize render" render
step "kubernetes-validate" kubernetes-validate -k "$K8S_VERSION" --strict --quiet \
    "$tmp/staging.core.yaml" "$tmp/production.core.yaml"
step "CRDs (structural)" python deploy/tools/deploycheck.py crds \
    "$tmp/staging.crds.yaml" "$tmp/production.crds.yaml"
step "consistency" python deploy/tools/deploycheck.py consistency "$tmp/k8s"
step hadolint hadolint Dockerfile
step actionlint actionlint
step checkov checkov_all
step "systemd-analyze security" systemd_security

echo "kubernetes-validate ran against Kubernetes $K8S_VERSION; ServiceMonitor and PrometheusRule were checked structurally (no schema ships for them)"
if ((failed)); then
    echo "failed: ${failures[*]}"
fi
echo "check-deploy: $passed passed, $failed failed"
((failed == 0))
