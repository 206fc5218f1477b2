#!/usr/bin/env bash
# The chaos soak (soak/README.md, docs/reliability.md): N consecutive business days of the
# release `esg` binary against the simulator, with a seeded schedule of faults, each day judged
# by an independent oracle. Ends with one line:
#   days D, faults F, loud failures L, repaired R, silent wrong files S
#
#   ops/soak.sh --days 1000 --seed 7          # the soak of docs/reliability.md
#   ops/soak.sh --days 412 --seed 7 --keep    # replay day 412 of it (with the days before it)
#   ops/soak.sh --days 30 --seed 1 -v         # one line per day on stderr
#
# Every other flag is esg-soak's (--dir, --keep, --accounts, --first-date; see --help). Needs
# Debian's faketime (the job runs on each business day's clock) and, for the disk faults, root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; then
  echo "== installing faketime (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
cargo build --release --locked --quiet -p esg -p esg-soak
exec target/release/esg-soak --esg target/release/esg "$@"
