"""Helpers shared by the analyst notebooks: where the inputs are, running the
termwatch binary, reading alert/label NDJSON and the Parquet export, and
drawing incidents and alerts on a time axis.

Everything termwatch decides (feature values, alerts, how an alert is matched
to an incident) comes from the binary; this module only loads and draws.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl

KINDS = ("voltage_instability", "network_degradation", "hardware_aging")
KIND_COLOURS = {
    "voltage_instability": "tab:orange",
    "network_degradation": "tab:blue",
    "hardware_aging": "tab:red",
    "firmware_regression": "tab:purple",
}
REPO = Path(__file__).resolve().parent.parent


def env_path(name: str, default: Path) -> Path:
    """A path from the environment variable `name`, or `default`."""
    value = os.environ.get(name)
    return Path(value) if value else default


def data_dir() -> Path:
    """TWNB_DIR: where scripts/test-notebooks puts the simulated fleet and
    where the notebooks write their own outputs (never into the checkout)."""
    return env_path("TWNB_DIR", Path("/var/tmp/termwatch-notebooks"))


def termwatch_bin() -> str:
    """TWNB_TERMWATCH, else `termwatch` on PATH, else the newest build in
    CARGO_TARGET_DIR (default /var/tmp/termwatch-target), release first."""
    explicit = os.environ.get("TWNB_TERMWATCH")
    if explicit:
        return explicit
    on_path = shutil.which("termwatch")
    if on_path:
        return on_path
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/termwatch-target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "termwatch"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        "no termwatch binary: set TWNB_TERMWATCH, put termwatch on PATH, or `cargo build -p termwatch`"
    )


def termwatch(*args: str | Path, quiet: bool = False) -> subprocess.CompletedProcess:
    """Runs the termwatch binary; raises with its stderr when it fails.

    TERMWATCH_* variables other than TERMWATCH_LOG are stripped: termwatch
    refuses configuration variables it does not know, and a notebook's
    environment is nobody's service configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERMWATCH_") or k == "TERMWATCH_LOG"}
    argv = [termwatch_bin(), *map(str, args)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    if not quiet and proc.stderr.strip():
        print(proc.stderr.strip())
    return proc


def read_labels(path: Path) -> pl.DataFrame:
    """Incident labels (alerts-v1): one row per label, `verdict` filled in
    with its default `incident`, `start`/`end` as UTC datetimes."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    schema = {
        "kind": pl.Utf8,
        "scope": pl.Utf8,
        "entity": pl.Utf8,
        "region": pl.Utf8,
        "start": pl.Utf8,
        "end": pl.Utf8,
        "verdict": pl.Utf8,
        "cause": pl.Utf8,
    }
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    return df.with_columns(
        pl.col("start").str.to_datetime(time_zone="UTC", time_unit="ms"),
        pl.col("end").str.to_datetime(time_zone="UTC", time_unit="ms"),
        pl.col("verdict").fill_null("incident"),
    )


def read_alerts(path: Path) -> pl.DataFrame:
    """Alert events (alerts-v1) with `ts` as a UTC datetime and the top
    reason's feature as `top_reason`."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    flat = [
        {
            "ts": r["ts"],
            "kind": r["kind"],
            "scope": r["scope"],
            "entity": r["entity"],
            "region": r["region"],
            "state": r["state"],
            "severity": r["severity"],
            "score": float(r["score"]),
            "model_version": r["model_version"],
            "top_reason": r["reasons"][0]["feature"] if r.get("reasons") else None,
        }
        for r in rows
    ]
    schema = {
        "ts": pl.Utf8,
        "kind": pl.Utf8,
        "scope": pl.Utf8,
        "entity": pl.Utf8,
        "region": pl.Utf8,
        "state": pl.Utf8,
        "severity": pl.Utf8,
        "score": pl.Float64,
        "model_version": pl.Utf8,
        "top_reason": pl.Utf8,
    }
    df = pl.DataFrame(flat, schema=schema)
    return df.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC", time_unit="ms"))


def alert_spans(alerts: pl.DataFrame) -> pl.DataFrame:
    """Pairs each `firing` event with the next `resolved` one of the same
    (kind, scope, entity): one row per alert, `resolved` null while firing
    at the end of the history."""
    spans = []
    open_: dict[tuple, dict] = {}
    for r in alerts.sort("ts").iter_rows(named=True):
        key = (r["kind"], r["scope"], r["entity"])
        if r["state"] == "firing":
            open_[key] = {**r, "fired": r["ts"], "resolved": None}
        elif key in open_:
            span = open_.pop(key)
            span["resolved"] = r["ts"]
            spans.append(span)
    spans.extend(open_.values())
    cols = ["kind", "scope", "entity", "region", "severity", "score", "model_version", "top_reason", "fired", "resolved"]
    if not spans:
        return pl.DataFrame(schema={c: alerts.schema.get(c, pl.Datetime("ms", "UTC")) for c in cols})
    return pl.DataFrame([{c: s[c] for c in cols} for s in spans]).sort("fired")


def scan_telemetry(export: Path) -> pl.LazyFrame:
    """The exported telemetry, all days (hive partition `day` included)."""
    return pl.scan_parquet(Path(export) / "telemetry" / "**" / "*.parquet", hive_partitioning=True)


def scan_features(export: Path, family: str) -> pl.LazyFrame:
    """One feature family of the export: terminal_voltage, site_voltage,
    network or aging."""
    return pl.scan_parquet(Path(export) / "features" / family / "**" / "*.parquet", hive_partitioning=True)


def shade_labels(ax, labels: pl.DataFrame, *, legend: bool = True) -> None:
    """Shades each label's [start, end] in its kind's colour; not_incident
    labels are hatched grey."""
    seen = set()
    for r in labels.iter_rows(named=True):
        if r["verdict"] == "not_incident":
            colour, hatch, name = "grey", "//", "not_incident label"
        else:
            colour, hatch, name = KIND_COLOURS[r["kind"]], None, f"incident: {r['kind']}"
        ax.axvspan(
            r["start"], r["end"], color=colour, alpha=0.18, hatch=hatch, lw=0, label=name if name not in seen else None
        )
        seen.add(name)
    if legend and seen:
        ax.legend(loc="upper left", fontsize="small")


def mark_alerts(ax, spans: pl.DataFrame) -> None:
    """Draws each alert as a vertical line where it fired (solid) and where
    it resolved (dotted), in its kind's colour."""
    seen = set()
    for r in spans.iter_rows(named=True):
        colour = KIND_COLOURS[r["kind"]]
        name = f"alert fired: {r['kind']}"
        ax.axvline(r["fired"], color=colour, lw=1.2, label=name if name not in seen else None)
        seen.add(name)
        if r["resolved"] is not None:
            ax.axvline(r["resolved"], color=colour, lw=0.8, ls=":")


def eval_report(alerts: Path, labels: Path, telemetry: list[Path]) -> dict:
    """`termwatch eval --json`: the figures of docs/evaluation.md."""
    args = ["eval", "--alerts", alerts, "--labels", labels, "--json"]
    for t in telemetry:
        args += ["--telemetry", t]
    return json.loads(termwatch(*args, quiet=True).stdout)


def kind_figures(report: dict, model: str) -> pl.DataFrame:
    """One row per kind of an eval report, in the units an analyst reads:
    delay in minutes, lead time in hours."""
    rows = []
    for k in report["kinds"]:
        delay = k["median_delay_ms"]
        lead = k["median_lead_time_ms"]
        rows.append(
            {
                "model": model,
                "kind": k["kind"],
                "precision": k["precision"],
                "recall": k["recall"],
                "f1": k["f1"],
                "false_per_1k_td": k["false_alerts_per_1000_terminal_days"],
                "delay_min": None if delay is None else delay / 60_000,
                "lead_h": None if lead is None else lead / 3_600_000,
                "firing": k["firing_alerts"],
                "false": k["false_alerts"],
                "incidents": k["incidents"],
                "detected": k["detected_incidents"],
            }
        )
    return pl.DataFrame(rows)


def break_gaps(df: pl.DataFrame, x: str, gap) -> pl.DataFrame:
    """Inserts an all-null row after each gap longer than `gap` in column `x`
    so that matplotlib breaks the line there instead of drawing a straight
    line across hours a terminal was switched off."""
    d = df.sort(x)
    fillers = d.filter(pl.col(x).diff() > gap).select(pl.col(x) - pl.duration(milliseconds=1))
    return pl.concat([d, fillers], how="diagonal_relaxed").sort(x)
