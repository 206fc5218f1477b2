#!/usr/bin/env bash
# Checks ops/alertmanager/alertmanager.yml:
#  1. `amtool check-config`: the file is a valid Alertmanager configuration;
#  2. `amtool config routes test`: each label set below reaches exactly the expected receivers;
#  3. the inhibition rules, on a real Alertmanager (prometheus-alertmanager or alertmanager on
#     PATH; skipped, with a message, when neither is installed). It runs on 127.0.0.1 with this
#     file's routes and inhibition rules but with empty receivers, so nothing is ever sent.
# Exits non-zero on the first mismatch. Needs amtool (Debian: prometheus-alertmanager) and python3.
set -euo pipefail
cd "$(dirname "$0")"
config=alertmanager.yml

echo "== amtool check-config $config"
amtool check-config "$config"

echo "== routes"
failures=0
# expect RECEIVERS LABEL=VALUE...: RECEIVERS is the comma-separated list amtool must print.
expect() {
  local want=$1
  shift
  local got
  got="$(amtool config routes test --config.file="$config" "$@" 2>/dev/null)"
  if [[ "$got" == "$want" ]]; then
    printf '  ok    %-75s -> %s\n' "$*" "$got"
  else
    printf '  FAIL  %-75s -> %s (expected %s)\n' "$*" "$got" "$want"
    failures=$((failures + 1))
  fi
}
page=development-pagerduty,development-email
expect "$page" alertname=EsgRunMissedStart severity=critical team=development cause=start_overdue
expect "$page" alertname=EsgRunMissedStart severity=critical team=development cause=start_not_seen kind=daily
expect "$page" alertname=EsgJobDown severity=critical team=development cause=scrape_failing
expect "$page" alertname=EsgRunOverWindow severity=critical team=development kind=daily
expect "$page" alertname=EsgRunTimedOut severity=critical team=development kind=daily
expect "$page" alertname=EsgRunCriticalFailure severity=critical team=development kind=daily
expect "$page" alertname=EsgFailureRatioHigh severity=critical team=development
expect "$page" alertname=EsgAlertChannelFailing severity=critical team=development channel=email
expect "$page" alertname=EsgDeliveryFailed severity=critical team=development target=compliance-sftp outcome=failed
expect business-email alertname=EsgFailureRatioHigh severity=warning team=business
expect business-email alertname=SomethingElse severity=critical team=business
expect development-email alertname=EsgScorerLagNotShrinking severity=warning team=development
expect development-email alertname=SomethingUnlabelled
if ((failures > 0)); then
  echo "$failures route(s) reached the wrong receivers" >&2
  exit 1
fi

echo "== inhibition rules"
am_bin="$(command -v prometheus-alertmanager || command -v alertmanager || true)"
if [[ -z "$am_bin" ]]; then
  echo "  SKIP: no prometheus-alertmanager or alertmanager binary to run them on"
  exit 0
fi
work="$(mktemp -d)"
am_pid=""
cleanup() {
  if [[ -n "$am_pid" ]]; then kill "$am_pid" 2>/dev/null || true; wait "$am_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Same routes and inhibition rules; every receiver emptied, so the test can never notify anyone.
python3 - "$config" "$work/alertmanager.yml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
head, sep, receivers = text.partition("\nreceivers:\n")
assert sep, "no top-level receivers: section"
names = re.findall(r"^  - name: *(\S+)", receivers, flags=re.M)
assert names, "no receivers found"
out = head + "\nreceivers:\n" + "".join(f"  - name: {n}\n" for n in names)
open(sys.argv[2], "w").write(out)
EOF
amtool check-config "$work/alertmanager.yml" >/dev/null

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$am_bin" --config.file="$work/alertmanager.yml" --storage.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >"$work/am.log" 2>&1 &
am_pid=$!

python3 - "http://127.0.0.1:$port" <<'EOF' || { echo "--- alertmanager log" >&2; tail -20 "$work/am.log" >&2; exit 1; }
import json, sys, time, urllib.request

base = sys.argv[1]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read()
    return json.loads(text) if text else None

deadline = time.time() + 20
while True:
    try:
        call("GET", "/api/v2/status")
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("alertmanager did not come up")
        time.sleep(0.2)

def post(*label_sets):
    call("POST", "/api/v2/alerts", [{"labels": dict(ls)} for ls in label_sets])

def inhibited(labels, wait):
    """Whether the alert with exactly these labels is inhibited; waits up to 5 s for `wait`."""
    want = dict(labels)
    for _ in range(25 if wait else 1):
        if any(a["labels"] == want and a["status"]["inhibitedBy"]
               for a in call("GET", "/api/v2/alerts")):
            return True
        time.sleep(0.2)
    return False

failures = 0
def expect(labels, want, why):
    """Expected inhibited first: once one alert of a batch is, the inhibitor has seen the batch."""
    global failures
    got = inhibited(labels, wait=want)
    print(f"  {'ok  ' if got == want else 'FAIL'}  {'inhibited' if want else 'not inhibited':13} {why}")
    failures += got != want

dev = {"team": "development", "severity": "critical"}

over_daily = {"alertname": "EsgRunOverWindow", "kind": "daily", **dev}
over_rerun = {"alertname": "EsgRunOverWindow", "kind": "rerun", **dev}
post({"alertname": "EsgRunCriticalFailure", "kind": "daily", "instance": "esg:9898",
      "outcome": "aborted", **dev}, over_daily, over_rerun)
expect(over_daily, True, "EsgRunOverWindow{kind=daily} while a daily run was aborted")
expect(over_rerun, False, "EsgRunOverWindow{kind=rerun} while a daily run was aborted")

ratio_dev = {"alertname": "EsgFailureRatioHigh", "instance": "esg:9898", **dev}
ratio_biz = {"alertname": "EsgFailureRatioHigh", "instance": "esg:9898",
             "team": "business", "severity": "warning"}
post({"alertname": "EsgRunTimedOut", "kind": "daily", **dev}, ratio_dev, ratio_biz)
expect(ratio_dev, True, "EsgFailureRatioHigh{team=development} while EsgRunTimedOut fires")
expect(ratio_biz, False, "EsgFailureRatioHigh{team=business} while EsgRunTimedOut fires")

overdue = {"alertname": "EsgRunMissedStart", "cause": "start_overdue", **dev}
not_seen = {"alertname": "EsgRunMissedStart", "cause": "start_not_seen", "kind": "daily", **dev}
post(overdue, not_seen)
expect(not_seen, True, "EsgRunMissedStart{cause=start_not_seen} with cause=start_overdue")
expect(overdue, False, "EsgRunMissedStart{cause=start_overdue} itself")

if failures:
    sys.exit(f"{failures} inhibition check(s) failed")
EOF
echo "all Alertmanager checks passed"
