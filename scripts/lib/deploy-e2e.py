#!/usr/bin/env python3
"""End-to-end check of deploy/ against real servers (called by scripts/test-deploy).

A `termwatch demo` (simulated fleet with injected faults, scored with
models/default) is scraped by a real Prometheus that loads
deploy/prometheus/rules. Once the demo has consumed its stream, this asks
Prometheus' HTTP API:

1. every alert termwatch raised that lasted long enough to be scraped
   (>= MIN_WALL_S of wall time) reached `firing` in Prometheus under the
   rule of its kind and scope, with its entity (and, for terminals, its site);
2. no fleet alert fired in Prometheus that termwatch did not raise (the rules
   invent nothing);
3. alerts fire for the injected faults and only for them: every fault
   termwatch detects is reached through the rules, every kind of fault is
   detected at least once, and no fleet alert fires that matches no injected
   fault (the detection table against the ground truth is printed; a fault
   the model misses is listed, not failed: recall is the detectors' figure,
   see `termwatch eval`, while a false page is what on-call would suffer);
4. no pipeline-health alert was pending or firing once records flowed;
5. every PromQL expression of the Grafana dashboard returns data.

Standard library only. Exits non-zero, naming each failure.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime

FLEET_RULES = {
    "TermwatchSiteVoltageUnstable": ("voltage_instability", "site"),
    "TermwatchTerminalVoltageUnstable": ("voltage_instability", "terminal"),
    "TermwatchRegionNetworkDegraded": ("network_degradation", "region"),
    "TermwatchHardwareAging": ("hardware_aging", "terminal"),
    "TermwatchFirmwareRegression": ("firmware_regression", "cohort"),
}
PIPELINE_RULES = [
    "TermwatchDown",
    "TermwatchStalled",
    "TermwatchConsumerLagging",
    "TermwatchRejectingRecords",
    "TermwatchCommitFailures",
    "TermwatchNotScoring",
]
MIN_WALL_S = 3.0

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def api(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def parse_demo(log):
    faults, events = [], []
    fault_re = re.compile(r"^  (\S+) (\w+)\s+(\w+)\s+(\S+)\s+(\S+) \.\. (\S+)(?: \(\w+\))?(?: at (\S+))?")
    alert_re = re.compile(r"^ALERT (FIRING|resolved)\s+(\w+) (\w+) (\w+) (\S+) in (\S+) at (\S+) score")
    for line in log.splitlines():
        if m := fault_re.match(line):
            region, kind, scope, entity, start, end, site = m.groups()
            faults.append(dict(region=region, kind=kind, scope=scope, entity=entity, start=ts(start), end=ts(end),
                               site=site))
        elif m := alert_re.match(line):
            state, kind, severity, scope, entity, region, at = m.groups()
            events.append(dict(state=state, kind=kind, scope=scope, entity=entity, region=region, ts=ts(at)))
    return faults, events


def termwatch_alerts(events, end_ts):
    """Firing spans per (kind, scope, entity) from termwatch's own events."""
    open_, spans = {}, []
    for e in events:
        key = (e["kind"], e["scope"], e["entity"])
        if e["state"] == "FIRING":
            open_[key] = e["ts"]
        elif key in open_:
            spans.append((key, open_.pop(key), e["ts"]))
    spans += [(key, start, None) for key, start in open_.items()]
    return spans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--demo-log", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--speed", type=float, required=True)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    base = args.prometheus
    t0 = time.time()

    # Wait for the demo to consume its stream (it then lingers, serving metrics).
    while True:
        with open(args.demo_log, encoding="utf-8", errors="replace") as f:
            log = f.read()
        if "serving metrics for" in log:
            break
        if time.time() - t0 > args.timeout:
            print(log[-3000:])
            fail(f"the demo did not finish its stream within {args.timeout:.0f} s")
            return 1
        time.sleep(1)
    time.sleep(4)  # a few more scrapes and rule evaluations of the final state
    end = time.time()

    targets = api(base, "targets")["activeTargets"]
    if not any(t["labels"].get("job") == "termwatch" for t in targets):
        fail("Prometheus has no termwatch target")
    start = t0 - 5
    rng = dict(start=f"{start:.3f}", end=f"{end:.3f}", step="1")

    faults, events = parse_demo(log)
    print(f"demo: {len(faults)} injected faults, {len(events)} termwatch alert events")
    if not faults or not events:
        fail("the demo printed no injected fault or no alert event")

    # What fired in Prometheus.
    fired = {}
    for s in api(base, "query_range", query='ALERTS{alertstate="firing"}', **rng)["result"]:
        m = s["metric"]
        name = m["alertname"]
        if name in FLEET_RULES:
            kind, scope = FLEET_RULES[name]
            if (m.get("kind"), m.get("scope")) != (kind, scope):
                fail(f"{name} fired with kind/scope {m.get('kind')}/{m.get('scope')}: {m}")
            key = (kind, scope, m.get("entity", ""))
            first = float(s["values"][0][0])
            fired.setdefault(key, {"labels": m, "first": first})
            if scope == "terminal" and not m.get("site"):
                fail(f"{name} for {key[2]} has no site label: {m}")
            if not m.get("severity"):
                fail(f"{name} for {key[2]} has no severity label")
    print(f"prometheus: {len(fired)} fleet alerts reached firing")

    # 1 and 2: the rules mirror termwatch's alerts.
    spans = termwatch_alerts(events, end)
    raised = {key for key, _, _ in spans}
    for key, s_ts, e_ts in spans:
        wall = None if e_ts is None else (e_ts - s_ts) / args.speed
        if key in fired:
            continue
        if wall is None or wall >= MIN_WALL_S:
            fail(f"termwatch raised {key} (for {'the rest of the run' if wall is None else f'{wall:.1f} s of wall time'}) "
                 "but no Prometheus alert reached firing for it")
    for key, f in fired.items():
        if key not in raised:
            fail(f"Prometheus fired {f['labels']['alertname']} for {key}, which termwatch never raised")

    # 3: against the ground truth. As alerts-v1 matches them: the same
    # entity, or a terminal and the site that holds it (either way round;
    # the demo prints each terminal fault's site).
    def matches(fault, key, labels):
        kind, scope, entity = key
        if kind != fault["kind"]:
            return False
        if fault["scope"] in ("region", "cohort") or scope in ("region", "cohort"):
            return scope == fault["scope"] and entity == fault["entity"]
        if scope == "site" and fault["scope"] == "terminal":
            return entity == fault["site"]
        return entity == fault["entity"] or labels.get("site") == fault["entity"]

    print("injected faults, as Prometheus saw them:")
    detected_kinds, kinds = set(), set()
    for fault in faults:
        kinds.add(fault["kind"])
        hits = [k for k, f in fired.items() if matches(fault, k, f["labels"])]
        by_termwatch = any(
            e["state"] == "FIRING" and e["kind"] == fault["kind"]
            and (e["entity"] == fault["entity"]) and fault["start"] <= e["ts"] <= fault["end"] + 3600
            for e in events
        )
        if hits:
            detected_kinds.add(fault["kind"])
        verdict = "fired" if hits else ("missed by the rules" if by_termwatch else "not detected by the model")
        print(f"  {fault['kind']:<20} {fault['scope']:<8} {fault['entity']:<10} {verdict}")
        if not hits and by_termwatch:
            fail(f"termwatch detected injected fault {fault['kind']} {fault['entity']} but no Prometheus alert fired")
    for kind in sorted(kinds):
        if kind not in detected_kinds:
            fail(f"no Prometheus alert fired for any injected {kind} fault")
    false_alerts = [k for k, f in fired.items() if not any(matches(x, k, f["labels"]) for x in faults)]
    for key in sorted(false_alerts):
        fail(f"{fired[key]['labels']['alertname']} fired for {key}, which matches no injected fault")

    # 4: pipeline health stayed quiet once records flowed.
    accepted = api(base, "query_range", query="sum(termwatch_records_accepted_total) > 0", **rng)["result"]
    flowing = float(accepted[0]["values"][0][0]) if accepted else None
    if flowing is None:
        fail("Prometheus never saw an accepted record")
    pipeline = "|".join(PIPELINE_RULES)
    for s in api(base, "query_range", query=f'ALERTS{{alertname=~"{pipeline}"}}', **rng)["result"]:
        late = [v for v in s["values"] if flowing is None or float(v[0]) >= flowing]
        if late:
            fail(f"pipeline alert {s['metric']['alertname']} was {s['metric']['alertstate']} while records flowed")
    print("pipeline-health alerts: checked (pending or firing once records flowed fails)")

    # 5: every dashboard expression returns data.
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    exprs = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("definition", "")
        if m := re.match(r"label_values\((\w+), *(\w+)\)", q):
            vals = api(base, f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
            if not vals:
                fail(f"dashboard variable ${var['name']} ({q}) has no values")
    empty = 0
    for title, expr in exprs:
        q = expr.replace("$__rate_interval", "1m").replace("$region", ".*")
        result = api(base, "query_range", query=q, **rng)["result"]
        if not any(s["values"] for s in result):
            empty += 1
            fail(f"dashboard panel {title!r}: {expr} returns no data")
    print(f"dashboard: {len(exprs) - empty} of {len(exprs)} expressions return data")

    print(f"end-to-end checks took {time.time() - t0:.0f} s")
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("end-to-end: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
