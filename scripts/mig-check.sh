#!/bin/sh
# Dynamic MIG on this machine's NVIDIA GPU, through hami's device-plugin code path: discover the
# profiles, create three instances as the scheduler would place them, check NVML refuses an
# overlapping one, destroy them. Run as root on a machine with an A100/A30/H100/H200; see docs/mig.md.
#   scripts/mig-check.sh [--gpu 0] [--enable] [--config device-config.yaml]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-"$here/.venv/bin/python"}
[ -x "$python" ] || python=python3
exec "$python" -m hami.deviceplugin.mig_check "$@"
