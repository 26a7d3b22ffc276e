//! Decode + validate + batch on realistic records: every field present,
//! about 700 bytes each, many terminals, values that vary from record to
//! record. Data is built outside the timed loop.
//!
//! cargo bench -p termwatch-telemetry --bench decode

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use termwatch_telemetry::{BatchBuilder, decode, time};

const ROWS: usize = 8192;

/// A small deterministic generator, so the bench needs no RNG crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn int(&mut self, n: u64) -> u64 {
        (self.next() * n as f64) as u64
    }
}

fn records(n: usize) -> Vec<String> {
    let mut g = Lcg(42);
    let start = time::parse_rfc3339_ms("2026-11-24T00:00:00Z").unwrap_or(0);
    (0..n)
        .map(|i| {
            let t = i % 5000;
            let ts = time::format_rfc3339_ms(start + (i / 5000) as i64 * 60_000);
            let mean = 12.0 + (g.next() - 0.5) * 0.2;
            let reads = g.int(20);
            let prints = g.int(15);
            let txns = g.int(18);
            format!(
                concat!(
                    r#"{{"terminal_id":"T-{t:06}","ts":"{ts}","region":"region-{r:02}","site_id":"S-{s:05}","#,
                    r#""merchant_id":"M-{m:05}","model":"P{model}00","firmware":"5.{fw}.1","installed_on":"2023-05-01","#,
                    r#""interval_s":60,"supply_v_nominal":12.0,"supply_v_mean":{mean:.2},"supply_v_min":{min:.2},"#,
                    r#""supply_v_max":{max:.2},"supply_v_std":{std:.3},"supply_sags":{sags},"supply_swells":0,"#,
                    r#""battery_pct":{bat:.1},"battery_health_pct":{bh:.1},"temperature_c":{temp:.1},"#,
                    r#""card_reads":{reads},"card_read_errors":{re},"print_jobs":{prints},"print_errors":{pe},"#,
                    r#""txn_count":{txns},"txn_failed":{tf},"txn_timeouts":{tt},"txn_latency_p50_ms":{p50:.1},"#,
                    r#""txn_latency_p95_ms":{p95:.1},"net_type":"{net}","net_rtt_ms":{rtt:.1},"net_loss_pct":{loss:.2},"#,
                    r#""net_signal_dbm":{sig:.1},"net_reconnects":{rc},"uptime_s":{up},"reboots":0,"app_crashes":0,"#,
                    r#""mem_used_pct":{mem:.1},"cpu_pct":{cpu:.1}}}"#
                ),
                t = t,
                ts = ts,
                r = t % 40,
                s = t / 4,
                m = t / 8,
                model = 1 + t % 4,
                fw = t % 3,
                mean = mean,
                min = mean - 0.1 - g.next() * 0.1,
                max = mean + 0.1 + g.next() * 0.1,
                std = 0.02 + g.next() * 0.03,
                sags = g.int(2),
                bat = 50.0 + g.next() * 50.0,
                bh = 80.0 + g.next() * 20.0,
                temp = 30.0 + g.next() * 10.0,
                reads = reads,
                re = g.int(2).min(reads),
                prints = prints,
                pe = g.int(2).min(prints),
                txns = txns,
                tf = g.int(2).min(txns),
                tt = g.int(2).min(txns),
                p50 = 300.0 + g.next() * 200.0,
                p95 = 700.0 + g.next() * 300.0,
                net = ["eth", "wifi", "cellular"][t % 3],
                rtt = 40.0 + g.next() * 60.0,
                loss = g.next() * 0.5,
                sig = -60.0 - g.next() * 40.0,
                rc = g.int(2),
                up = 100_000 + i as u64 * 60,
                mem = 50.0 + g.next() * 20.0,
                cpu = 5.0 + g.next() * 20.0,
            )
        })
        .collect()
}

fn decode_validate_batch(c: &mut Criterion) {
    let lines = records(ROWS);
    let bytes: usize = lines.iter().map(String::len).sum();
    let now = time::now_ms();
    // Fail loudly rather than benchmark the rejection path by accident.
    for l in &lines {
        if let Err(e) = decode(l.as_bytes(), now) {
            panic!("bench record rejected: {e}\n{l}");
        }
    }
    let mut builder = BatchBuilder::with_capacity(ROWS);
    let mut run = |lines: &[String]| {
        for l in lines {
            if let Ok(r) = decode(black_box(l.as_bytes()), now) {
                let _ = builder.append(&r);
            }
        }
        black_box(builder.finish().map(|b| b.num_rows()).unwrap_or(0))
    };

    let mut group = c.benchmark_group("decode_validate_batch");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_with_input(
        BenchmarkId::new("bytes", format!("{ROWS}rows_{}B_per_record", bytes / ROWS)),
        &lines,
        |b, l| b.iter(|| run(l)),
    );
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_with_input(BenchmarkId::new("records", format!("{ROWS}rows")), &lines, |b, l| b.iter(|| run(l)));
    group.finish();

    // The parsing floor of FACTS.md: serde_json into a plain struct with
    // borrowed strings, no validation, no Arrow. Same data, same session.
    let mut floor = c.benchmark_group("floor_serde_json_typed");
    floor.throughput(Throughput::Bytes(bytes as u64));
    floor.bench_with_input(BenchmarkId::new("bytes", ROWS), &lines, |b, lines| {
        b.iter(|| {
            let mut n = 0usize;
            for l in lines {
                if let Ok(r) = serde_json::from_str::<Floor<'_>>(black_box(l)) {
                    n += r.terminal_id.len();
                }
            }
            black_box(n)
        })
    });
    floor.finish();
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct Floor<'a> {
    terminal_id: &'a str,
    ts: &'a str,
    region: &'a str,
    site_id: Option<&'a str>,
    merchant_id: Option<&'a str>,
    model: Option<&'a str>,
    firmware: Option<&'a str>,
    installed_on: Option<&'a str>,
    interval_s: Option<u32>,
    supply_v_nominal: Option<f64>,
    supply_v_mean: Option<f64>,
    supply_v_min: Option<f64>,
    supply_v_max: Option<f64>,
    supply_v_std: Option<f64>,
    supply_sags: Option<u32>,
    supply_swells: Option<u32>,
    battery_pct: Option<f64>,
    battery_health_pct: Option<f64>,
    temperature_c: Option<f64>,
    card_reads: Option<u32>,
    card_read_errors: Option<u32>,
    print_jobs: Option<u32>,
    print_errors: Option<u32>,
    txn_count: Option<u32>,
    txn_failed: Option<u32>,
    txn_timeouts: Option<u32>,
    txn_latency_p50_ms: Option<f64>,
    txn_latency_p95_ms: Option<f64>,
    net_type: Option<&'a str>,
    net_rtt_ms: Option<f64>,
    net_loss_pct: Option<f64>,
    net_signal_dbm: Option<f64>,
    net_reconnects: Option<u32>,
    uptime_s: Option<u64>,
    reboots: Option<u32>,
    app_crashes: Option<u32>,
    mem_used_pct: Option<f64>,
    cpu_pct: Option<f64>,
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = decode_validate_batch
}
criterion_main!(benches);
