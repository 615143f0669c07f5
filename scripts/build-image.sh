#!/usr/bin/env bash
# Builds the acrpull container image without Docker and without pulling a base image: an OCI
# image layout assembled from the static release binary, with one reproducible layer.
#
#   scripts/build-static.sh            # first: target/x86_64-unknown-linux-gnu/release/acrpull
#   scripts/build-image.sh [--binary PATH] [--out DIR] [--tag TAG]
#   skopeo copy oci:target/image/oci:0.1.0 docker://myregistry.azurecr.io/acrpull:0.1.0
#
# The layer holds:
#   /acrpull          the static binary (0755, root-owned)
#   /manager          a hard link to /acrpull: upstream msi-acrpull's Deployments run
#                     `command: [/manager]`, and the same manifests must start this image
#   /etc/passwd       root and nonroot (uid/gid 65532, distroless's user), /etc/group
#   /etc/ssl/certs/ca-certificates.crt   the Mozilla CA set as Debian's ca-certificates package
#                     ships it (/usr/share/ca-certificates/mozilla), not this machine's
#                     /etc/ssl/certs bundle, which may hold locally added CAs (a proxy's)
#   /tmp              1777, empty (the Deployment mounts the root filesystem read-only)
# The config runs /acrpull as 65532:65532 and exposes 8080 (metrics) and 8081 (health).
# deploy/Dockerfile builds the same image FROM scratch out of DIR/rootfs (tests/image.rs checks
# that the two agree).
#
# Output (default DIR: target/image): DIR/rootfs/ (the layer's files) and DIR/oci/ (an OCI image
# layout whose index names the image TAG, default the crate version). Byte-for-byte
# reproducible for the same binary and ca-certificates version: fixed owners, modes and mtimes
# (SOURCE_DATE_EPOCH, default the last commit's time), sorted entries, gzip -n.
set -euo pipefail
# The C locale for every sort and glob below: the same bytes on every machine.
export LC_ALL=C
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

binary="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/acrpull"
out="target/image"
tag=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--out DIR] [--tag TAG]" >&2; exit 2 ;;
    esac
done
if [ -z "$tag" ]; then
    tag="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
fi
ca_dir="${CA_DIR:-/usr/share/ca-certificates/mozilla}"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

[ -x "$binary" ] || { echo "build-image: no binary at $binary (run scripts/build-static.sh)" >&2; exit 1; }
case "$(file -b "$binary")" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "build-image: $binary is not statically linked: $(file -b "$binary")" >&2; exit 1 ;;
esac
ls "$ca_dir"/*.crt >/dev/null 2>&1 || { echo "build-image: no CA certificates in $ca_dir (apt-get install -y ca-certificates)" >&2; exit 1; }

rm -rf "$out"
rootfs="$out/rootfs"
oci="$out/oci"
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$oci/blobs/sha256"
install -m 0755 "$binary" "$rootfs/acrpull"
ln "$rootfs/acrpull" "$rootfs/manager"
printf '%s\n' \
    'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$rootfs/etc/group"
# Sorted by file name, each ending in a newline: the same bytes for the same package version.
awk 1 "$ca_dir"/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0755 "$rootfs" "$rootfs/etc" "$rootfs/etc/ssl" "$rootfs/etc/ssl/certs"
chmod 1777 "$rootfs/tmp"

# The layer: GNU tar keeps /manager as a hard link entry to /acrpull (one copy of the bytes).
tar --create --file "$out/layer.tar" --directory "$rootfs" \
    --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --format=posix --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
    acrpull etc manager tmp
gzip -n -9 -c "$out/layer.tar" >"$out/layer.tar.gz"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blob() { # FILE -> stores it as a blob, prints its digest
    local digest
    digest="$(sha "$1")"
    cp "$1" "$oci/blobs/sha256/$digest"
    echo "sha256:$digest"
}

diff_id="sha256:$(sha "$out/layer.tar")"
layer_digest="$(blob "$out/layer.tar.gz")"
layer_size="$(size "$out/layer.tar.gz")"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
version="$("$binary" --version | awk '{print $2}')"

cat >"$out/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"$created","config":{"User":"65532:65532","Entrypoint":["/acrpull"],"ExposedPorts":{"8080/tcp":{},"8081/tcp":{}},"Env":["PATH=/"],"WorkingDir":"/","Labels":{"org.opencontainers.image.title":"acrpull","org.opencontainers.image.version":"$version","org.opencontainers.image.licenses":"MIT"}},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created":"$created","created_by":"scripts/build-image.sh"}]}
EOF
config_digest="$(blob "$out/config.json")"
config_size="$(size "$out/config.json")"

cat >"$out/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$layer_digest","size":$layer_size}]}
EOF
manifest_digest="$(blob "$out/manifest.json")"
manifest_size="$(size "$out/manifest.json")"

printf '%s\n' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
cat >"$oci/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest_digest","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
EOF
rm -f "$out/layer.tar" "$out/layer.tar.gz" "$out/config.json" "$out/manifest.json"

echo "build-image: $oci:$tag $manifest_digest (layer $layer_size bytes)"
