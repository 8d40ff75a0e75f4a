#!/usr/bin/env bash
# What the tests need beyond pip, installed with apt-get (Debian) when missing, with one
# `apt-get update` for all of it: tmux for the end-to-end TUI test (tests/tui/test_e2e_tmux.py),
# and Slurm's slurmctld, slurmd, slurm-client and munge for tests/slurm (a real cluster on this
# machine, started by a fixture).
#
#   bash tests/install_tools.sh            best effort (make test): a warning, and those tests skip
#   bash tests/install_tools.sh --strict   exit 1 when something cannot be installed (.ci/run)
#
# As root it runs apt-get itself; otherwise `sudo -n`, which fails instead of asking for a password.
set -uo pipefail

strict=0
[ "${1:-}" = "--strict" ] && strict=1

need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge tmux:tmux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing ${need[*]} for the tests"
as_root=()
[ "$(id -u)" -ne 0 ] && as_root=(sudo -n)
log="${TMPDIR:-/tmp}/rltui-tools-apt.log"
if (${as_root[@]+"${as_root[@]}"} apt-get update -qq \
    && ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
       --no-install-recommends "${need[@]}") >"$log" 2>&1; then
  exit 0
fi
if [ $strict -eq 1 ]; then
  echo "error: could not install ${need[*]} (see $log)" >&2
  exit 1
fi
echo "warning: could not install ${need[*]} (see $log); the tests that need them will skip" >&2
exit 0
