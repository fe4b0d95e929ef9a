#!/usr/bin/env bash
# Build the Dockerfile without a Docker engine and run the BIDS App inside the image.
#
# Needs root (buildah with --isolation chroot and the vfs storage driver, debootstrap, unshare).
# Steps: make a Debian bookworm base image with debootstrap (no registry is reachable, so the
# CUDA base is swapped for it through BASE_IMAGE); build the Dockerfile with torch from a local
# wheel folder; then, inside the image: `tumsyn --version`, write the example dataset, run the
# participant level as a non-root UID with no network, the input bind-mounted read-only and the
# output bind-mounted, and validate the derivatives with bids-validator-deno.
#
# Environment:
#   TUMSYN_BUILD_WORK  where buildah keeps its storage and the test its files
#                      (default /var/tmp/tumsyn-test-build; reused, so a second run is faster)
#   TORCH_WHEELS       a folder with the torch wheel and its dependencies; default: fill
#                      containers/wheels with `pip download torch==$TORCH_VERSION`
#   TORCH_VERSION      default 2.13.0 (the pin in requirements-pins.txt)
#   DEBIAN_MIRROR      default: the first Debian mirror in this machine's apt sources
#   KEEP_IMAGE=1       keep the built image (default: removed at the end, the base is kept)
#   CLEAN=1            remove everything at the end, base image and storage included (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${TUMSYN_BUILD_WORK:-/var/tmp/tumsyn-test-build}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
BASE=localhost/tumsyn-debian-bookworm-base
IMAGE=localhost/tumsyn-bids:test
TEST_UID=1234
T_START=$(date +%s)

say() { printf '\n=== %s\n' "$*" >&2; }
die() { printf 'test-build: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (buildah chroot isolation, debootstrap, unshare)"
mkdir -p "$WORK"
BA=(buildah --storage-driver vfs --root "$WORK/storage" --runroot "$WORK/runroot")

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing buildah and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi

# ------------------------------------------------------------------------------- base image
if ! "${BA[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    say "debootstrap: Debian bookworm minbase -> $BASE"
    if [ -z "${DEBIAN_MIRROR:-}" ]; then
        DEBIAN_MIRROR=$(grep -rhoE '(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
            /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
        DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    fi
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
    ctr=$("${BA[@]}" from scratch)
    "${BA[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null
    "${BA[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "$ctr"
    "${BA[@]}" commit --quiet "$ctr" "$BASE" >/dev/null
    "${BA[@]}" rm "$ctr" >/dev/null
    rm -rf "$WORK/rootfs" "$WORK/rootfs.tar"
fi
T_BASE=$(date +%s)

# ------------------------------------------------------------------------------ torch wheels
# The Dockerfile installs torch from containers/wheels when that holds wheels.
CONTEXT_WHEELS=$ROOT/containers/wheels
if [ -n "${TORCH_WHEELS:-}" ]; then
    cp -n "$TORCH_WHEELS"/*.whl "$CONTEXT_WHEELS"/
elif ! compgen -G "$CONTEXT_WHEELS/torch-$TORCH_VERSION*.whl" >/dev/null; then
    say "pip download torch==$TORCH_VERSION -> containers/wheels"
    PIP=("${PYTHON:-python3}" -m pip)
    [ -x "$ROOT/.venv/bin/python" ] && PIP=("$ROOT/.venv/bin/python" -m pip)
    "${PIP[@]}" download --quiet --only-binary=:all: --python-version 3.11 \
        -d "$CONTEXT_WHEELS" "torch==$TORCH_VERSION"
fi

# ------------------------------------------------------------------------------------ build
# Behind a TLS-intercepting proxy the Debian image does not trust the proxy's CA: lend it the
# host's bundle for the build only (a bind mount, not a layer).
CA_ARGS=()
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$ca" ]; then
        CA_ARGS=(-v "$(dirname "$ca")":/run/hostca:ro --build-arg "PIP_CERT=/run/hostca/$(basename "$ca")")
        break
    fi
done
say "building $IMAGE (buildah bud, vfs, chroot isolation)"
T0=$(date +%s)
"${BA[@]}" bud --isolation chroot --layers=false \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg VCS_REF="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "${CA_ARGS[@]}" -f Dockerfile -t "$IMAGE" . 2>&1 | tee "$WORK/build.log" | grep -E '^STEP|^COMMIT|torch |Successfully|rror' >&2 \
    || true
"${BA[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "build failed (log: $WORK/build.log)"; }
T1=$(date +%s)
BUILD_S=$((T1 - T0))

# -------------------------------------------------------------------------------------- run
IMG_JSON=$("${BA[@]}" inspect --type image "$IMAGE")
ENTRYPOINT=$(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"]))' <<<"$IMG_JSON")
[ "$ENTRYPOINT" = tumsyn ] || die "ENTRYPOINT is '$ENTRYPOINT', expected tumsyn"
SIZE=$("${BA[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)

ctr=$("${BA[@]}" from --pull-never "$IMAGE")
cleanup() { "${BA[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# buildah run ignores ENTRYPOINT: call it ourselves. No network at run time (unshare --net).
run() { unshare --net "${BA[@]}" run --isolation chroot "$@"; }

say "tumsyn --version"
VERSION_OUT=$(run --user "$TEST_UID:$TEST_UID" "$ctr" -- "$ENTRYPOINT" --version)
echo "$VERSION_OUT"
[[ $VERSION_OUT == tumsyn-bids* ]] || die "unexpected --version output: $VERSION_OUT"

say "TemplateFlow home: complete, read-only, found offline by uid $TEST_UID"
# init on a complete home only checks every file (and would fail to write on a read-only one).
run --user "$TEST_UID:$TEST_UID" "$ctr" -- tumsyn-templates init --quiet /opt/templateflow \
    || die "the image's TemplateFlow home is incomplete"
if run --user "$TEST_UID:$TEST_UID" "$ctr" -- touch /opt/templateflow/x 2>/dev/null; then
    die "/opt/templateflow was writable"
fi
run --user "$TEST_UID:$TEST_UID" "$ctr" -- python -c \
    "from tumsyn_bids.templates import get_template; print(get_template('MNI152NLin2009aSym', 1, 'mask', desc='brain'))" \
    || die "get_template failed in the image"

DATA=$WORK/data OUT=$WORK/out
rm -rf "$DATA" "$OUT"
mkdir -p "$DATA" "$OUT"
chown "$TEST_UID:$TEST_UID" "$DATA" "$OUT"
say "tumsyn-example-data (in the image)"
run --user "$TEST_UID:$TEST_UID" -v "$DATA":/data "$ctr" -- tumsyn-example-data /data/bids >/dev/null

say "participant run: uid $TEST_UID, no network, /data read-only, /out bind-mounted"
touch "$WORK/mark"
sleep 1
T2=$(date +%s)
run --user "$TEST_UID:$TEST_UID" -v "$DATA":/data:ro -v "$OUT":/out "$ctr" -- \
    "$ENTRYPOINT" /data/bids /out participant --participant-label 01 --target T2w \
    --patch-size 20 --nprocs 1 -w /tmp/work 2>&1 | tail -n 15
RUN_S=$(($(date +%s) - T2))

# Read-only root file system: nothing outside /tmp (and the mounts) may have been written.
# (buildah run cannot make the root read-only, so look at what changed instead.)
mnt=$("${BA[@]}" mount "$ctr")
WRITES=$(cd "$mnt" && find . -xdev -newer "$WORK/mark" ! -path . ! -path ./tmp ! -path './tmp/*' \
    ! -path ./data ! -path ./out ! -path ./etc/hosts ! -path ./etc/resolv.conf \
    ! -path ./etc/hostname ! -path ./run ! -path './run/*' ! -path ./dev ! -path ./proc ! -path ./sys \
    | head -n 20)
"${BA[@]}" umount "$ctr" >/dev/null
[ -z "$WRITES" ] || die "the run wrote outside /tmp and the bind mounts:
$WRITES"
echo "no writes to the image's file system outside /tmp"

say "checking the derivatives"
find "$OUT" -name '*.nii.gz' | sort
compgen -G "$OUT/sub-01/*/anat/*T2w.nii.gz" >/dev/null || compgen -G "$OUT/sub-01/anat/*T2w.nii.gz" >/dev/null \
    || die "no synthesized T2w under $OUT/sub-01"
python3 - "$OUT/dataset_description.json" <<'PY' || die "dataset_description.json lacks the container"
import json, sys
gen = json.load(open(sys.argv[1]))["GeneratedBy"][0]
print("GeneratedBy:", json.dumps(gen))
assert gen.get("Container", {}).get("Type") == "docker", gen
PY
find "$OUT" ! -uid "$TEST_UID" -print -quit | grep -q . && die "files in /out not owned by uid $TEST_UID"
if run --user "$TEST_UID:$TEST_UID" -v "$DATA":/data:ro "$ctr" -- touch /data/bids/x 2>/dev/null; then
    die "/data was writable"
fi
run --user "$TEST_UID:$TEST_UID" -v "$OUT":/out:ro "$ctr" -- \
    bids-validator-deno --ignoreWarnings /out >"$WORK/validator.txt" 2>&1 \
    || { cat "$WORK/validator.txt" >&2; die "bids-validator-deno rejected the derivatives"; }
grep -q "This dataset appears to be BIDS compatible" "$WORK/validator.txt" \
    || { cat "$WORK/validator.txt" >&2; die "unexpected validator output"; }
echo "bids-validator-deno: the derivatives are BIDS compatible"

if [ "${KEEP_IMAGE:-0}" != 1 ]; then
    cleanup
    trap - EXIT
    "${BA[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
fi
if [ "${CLEAN:-0}" = 1 ]; then  # drop everything, the base image and buildah's storage too
    "${BA[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$WORK"
fi
say "PASS"
printf 'base image:  %4d s\nbuild:       %4d s\nparticipant: %4d s\ntotal:       %4d s\nimage size:  %s\n' \
    "$((T_BASE - T_START))" "$BUILD_S" "$RUN_S" "$(($(date +%s) - T_START))" "$SIZE"
