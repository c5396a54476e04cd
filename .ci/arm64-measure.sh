#!/usr/bin/env bash
# The measuring side on aarch64, under qemu-user emulation: a bundle exported here (x86, torch)
# measured by an aarch64 Python with the aarch64 wheels of numpy, openvino and ai-edge-litert and
# no torch. Timings under emulation mean nothing; the rows' status, mAP and fingerprint do.
#
#   bash .ci/arm64-measure.sh BUNDLE OUT [ROOTFS]
#
# BUNDLE: a folder written by `python -m bench.export`; OUT: where the run folder comes back;
# ROOTFS: the arm64 Debian root it builds once and reuses (default /var/tmp/bavit-arm64).
# Needs root, Debian's packages (qemu-user-static, debootstrap) and PyPI; binfmt_misc must be
# mountable (it registers qemu-aarch64 for this machine). Not in CI: it takes about 15 minutes.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BUNDLE OUT [ROOTFS]" >&2; exit 2; }
BUNDLE=$(realpath "$1"); OUT=$(realpath -m "$2"); ROOTFS=${3:-/var/tmp/bavit-arm64}
[ -f "$BUNDLE/manifest.json" ] || { echo "$0: $BUNDLE: no manifest.json (not a bench.export bundle)" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}

command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap; }
[ -f /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register

if [ ! -x "$ROOTFS/usr/bin/python3" ] || [ -e "$ROOTFS/debootstrap" ]; then
  [ -e "$ROOTFS/debootstrap/debootstrap" ] || debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3-venv,python3-pip,ca-certificates bookworm "$ROOTFS" http://deb.debian.org/debian
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
fi

# the aarch64 wheels, fetched here (the chroot's pip would run emulated) and installed offline there
PLATFORMS=(--platform manylinux2014_aarch64)
for v in 17 28 31 34 35 36; do PLATFORMS+=(--platform "manylinux_2_${v}_aarch64"); done
mkdir -p "$ROOTFS/wheels"
"$HOST_PY" -m pip download -q --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.11 --implementation cp \
  --abi cp311 --abi abi3 --abi none -d "$ROOTFS/wheels" numpy psutil tqdm openvino ai-edge-litert faster-coco-eval
[ -x "$ROOTFS/opt/venv/bin/python" ] || chroot "$ROOTFS" python3 -m venv /opt/venv
chroot "$ROOTFS" /opt/venv/bin/pip install -q --no-index --find-links /wheels numpy psutil tqdm openvino \
  ai-edge-litert faster-coco-eval

# the measuring side's code only (its torch-free modules; the build side is imported lazily) and the bundle
rm -rf "$ROOTFS/opt/bavit-bench" "$ROOTFS/opt/bundle" "$ROOTFS/opt/run"
mkdir -p "$ROOTFS/opt/bavit-bench"
cp -r "$REPO/bench" "$REPO/targets" "$REPO/bavit" "$REPO/quant" "$ROOTFS/opt/bavit-bench/"
cp -r "$BUNDLE" "$ROOTFS/opt/bundle"

mounts=()
cleanup() { for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
for d in proc sys dev; do
  mountpoint -q "$ROOTFS/$d" || { mount --rbind "/$d" "$ROOTFS/$d"; mounts+=("$ROOTFS/$d"); }
done
chroot "$ROOTFS" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root PYTHONPATH=/opt/bavit-bench \
  OMP_NUM_THREADS=2 sh -c 'cd /opt/bavit-bench && python -c "import platform, sys; print(platform.machine(), sys.version.split()[0])" &&
    pip list --format=freeze && python -m bench.measure /opt/bundle --out /opt/run --no-report'
rm -rf "$OUT" && cp -r "$ROOTFS/opt/run" "$OUT"
echo "arm64 run: $OUT (read it here: python -m reports.build $OUT)"
