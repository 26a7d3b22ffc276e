"""How fast would a count of a terminal's recent unsettled windows find a
failing power supply, and how often would healthy terminals reach it?
(docs/model-history.md, "Measured after -60, not built".)

    termwatch export --input FLEET.ndjson --out DIR
    python docs/experiments/terminal-unrest-61.py DIR FLEET.labels.ndjson

A window is unsettled when its supply's deviation is more than 3 of the
terminal's own spreads above its level or its sags a surprise of more than
6 nats (the thresholds below which the feature engine learns). The count
decays with the given time constant; a terminal-day counts as a false alarm
when the count reaches the level outside its own and its site's voltage
incidents (and 6 hours after). Needs polars (notebooks/requirements.txt).
"""
import polars as pl, glob, json, sys, math
d = sys.argv[1]; labels = sys.argv[2]
df = pl.read_parquet(glob.glob(f'{d}/features/terminal_voltage/*/*.parquet')).sort(['terminal_id','window_end'])
df = df.with_columns(unstable=((pl.col('v_std_z')>3)|(pl.col('sag_surprise')>6)).cast(pl.Float64),
                     t=pl.col('window_end').dt.epoch('ms'))
labs = [json.loads(l) for l in open(labels)]
volt = [l for l in labs if l['kind']=='voltage_instability']
from datetime import datetime
def ms(s): return int(datetime.fromisoformat(s.replace('Z','+00:00')).timestamp()*1000)
term_inc = {}
site_inc = {}
for l in volt:
    (term_inc if l['scope']=='terminal' else site_inc).setdefault(l['entity'], []).append((ms(l['start']), ms(l['end'])))
taus = [1, 3, 6]
res = {}
for (tid, site), g in df.group_by(['terminal_id','site_id']):
    ts = g['t'].to_list(); u = g['unstable'].to_list()
    for tau in taus:
        c = 0.0; last = None; out=[]
        for t, x in zip(ts, u):
            if last is not None:
                c *= math.exp(-(t-last)/(tau*3600e3))
            c += x; last = t; out.append(c)
        res[(tid, tau)] = (ts, out, site)
# healthy: windows not within any voltage incident of this terminal or its site (plus 6h after)
for tau in taus:
    for level in [1.5, 2, 2.5, 3, 4]:
        false_days = set(); delays = []
        for (tid, ta), (ts, out, site) in res.items():
            if ta != tau: continue
            incs = term_inc.get(tid, []) + site_inc.get(site, [])
            for t, c in zip(ts, out):
                if c >= level and not any(s <= t <= e + 6*3600e3 for s, e in incs):
                    false_days.add((tid, t // 86400000))
            for s, e in term_inc.get(tid, []):
                hit = next((t for t, c in zip(ts, out) if s <= t <= e and c >= level), None)
                delays.append(None if hit is None else (hit - s)/60000)
        dd = sorted(x for x in delays if x is not None)
        print(f"tau {tau}h level {level}: healthy terminal-days over {len(false_days)}, terminal incidents found {len(dd)}/{len(delays)} delays(min) {[round(x) for x in dd]}")
