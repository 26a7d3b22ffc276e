//! Simulator throughput in records per second: generation and JSON into
//! memory (no I/O), for a fixed seed. The fleet and schedule are built
//! outside the timed part.

#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use termwatch_sim::{SimConfig, Simulator};

fn config(terminals: u32, interval_s: u32) -> SimConfig {
    SimConfig { seed: 1, terminals, regions: 8, days: 0.5, interval_s, ..SimConfig::default() }
}

fn records(cfg: &SimConfig) -> u64 {
    let mut sim = Simulator::new(cfg.clone()).expect("valid config");
    let mut buf = Vec::new();
    let mut n = 0;
    while sim.next_record(&mut buf).is_some() {
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    for (terminals, interval_s) in [(200, 60), (1000, 60), (1000, 300)] {
        let cfg = config(terminals, interval_s);
        group.throughput(Throughput::Elements(records(&cfg)));
        group.bench_function(format!("pull/terminals={terminals}/interval_s={interval_s}/days=0.5"), |b| {
            b.iter_batched(
                || (Simulator::new(cfg.clone()).expect("valid config"), Vec::with_capacity(1024)),
                |(mut sim, mut buf)| {
                    let mut bytes = 0usize;
                    while sim.next_record(&mut buf).is_some() {
                        bytes += buf.len();
                    }
                    black_box(bytes)
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_function(format!("write_ndjson/terminals={terminals}/interval_s={interval_s}/days=0.5"), |b| {
            b.iter_batched(
                || Simulator::new(cfg.clone()).expect("valid config"),
                |mut sim| black_box(sim.write_ndjson(std::io::sink()).expect("writes").records),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
