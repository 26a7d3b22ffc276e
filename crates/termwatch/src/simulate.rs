//! `termwatch simulate`: writes a simulated fleet's telemetry history and its
//! ground-truth incident labels (see docs/simulator.md).

use std::path::PathBuf;

use anyhow::Context as _;
use termwatch_sim::SimConfig;

/// Every option overrides the same parameter of `--config` (or of the
/// defaults); the defaults are those of `SimConfig`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Telemetry output, NDJSON in arrival order; gzip when the name ends in `.gz`.
    #[arg(long, value_name = "FILE", required_unless_present = "kafka")]
    pub out: Option<PathBuf>,
    /// Stream to Kafka instead of a file: bootstrap brokers, `host:port[,...]`.
    #[arg(long, value_name = "BROKERS", conflicts_with = "out")]
    pub kafka: Option<String>,
    /// Topic to stream to (with --kafka); records are keyed by terminal_id.
    #[arg(long, default_value = "telemetry", requires = "kafka")]
    pub topic: String,
    /// Simulated seconds per wall-clock second (with --kafka); 0 sends as fast as the broker takes it.
    #[arg(long, default_value_t = 0.0, requires = "kafka")]
    pub speed: f64,
    /// Ground-truth incident labels, one JSON object per line, sorted by start.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Simulator configuration as JSON (every key optional; see `SimConfig`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of terminals [default: 1000].
    #[arg(long)]
    pub terminals: Option<u32>,
    /// Number of network regions [default: 8, or the number of terminals if fewer].
    #[arg(long)]
    pub regions: Option<u32>,
    /// Days of history; fractions allowed [default: 7].
    #[arg(long)]
    pub days: Option<f64>,
    /// Reporting interval in seconds, 1-3600 [default: 60].
    #[arg(long = "interval-s", value_name = "SECONDS")]
    pub interval_s: Option<u32>,
    /// Seed: the same arguments and seed give byte-identical output [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// First day of the history, YYYY-MM-DD, 00:00 UTC [default: 2026-09-01].
    #[arg(long, value_name = "DATE")]
    pub start: Option<String>,
    /// Mean terminals per site (merchant location) [default: 2.5].
    #[arg(long)]
    pub terminals_per_site: Option<f64>,
    /// Share of sites switching their terminals off outside opening hours [default: 0.35].
    #[arg(long)]
    pub night_off_share: Option<f64>,
    /// Share of deliberately damaged records [default: 0.001].
    #[arg(long)]
    pub damaged_share: Option<f64>,
    /// Share of records arriving 1-15 minutes late [default: 0.003].
    #[arg(long)]
    pub late_share: Option<f64>,
    /// Share of records arriving 1-6 hours late [default: 0.0002].
    #[arg(long)]
    pub very_late_share: Option<f64>,
    /// Reports per simulated day whose terminal's clock is 23 h 59 m fast for that report [default: 0].
    #[arg(long)]
    pub clock_jumps_per_day: Option<f64>,
    /// Multiplies the rates of the labelled faults (aging, voltage, network) [default: 1].
    #[arg(long, value_name = "FACTOR")]
    pub fault_scale: Option<f64>,
    /// Draws the fleet's physics (noise of each measurement, a noisier model, how regional
    /// faults spread, night switch-off, lateness, blips, uplink failures, faintest faults)
    /// from wide ranges: the same N gives the same physics, printed as a `--config` would
    /// give it; options given here still win (docs/simulator.md).
    #[arg(long, value_name = "N")]
    pub physics_draw: Option<u64>,
}

impl SimulateArgs {
    /// The configuration: `--config` or the defaults, then the options.
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                SimConfig::from_json(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => SimConfig::default(),
        };
        if let Some(draw) = self.physics_draw {
            cfg.draw_physics(draw);
        }
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
        set(&mut cfg.terminals, self.terminals);
        set(&mut cfg.days, self.days);
        set(&mut cfg.interval_s, self.interval_s);
        set(&mut cfg.seed, self.seed);
        set(&mut cfg.terminals_per_site, self.terminals_per_site);
        set(&mut cfg.night_off_share, self.night_off_share);
        set(&mut cfg.damaged_share, self.damaged_share);
        set(&mut cfg.late_share, self.late_share);
        set(&mut cfg.very_late_share, self.very_late_share);
        set(&mut cfg.clock_jumps_per_day, self.clock_jumps_per_day);
        if let Some(start) = &self.start {
            cfg.start = start.clone();
        }
        match self.regions {
            Some(r) => cfg.regions = r,
            // A tiny fleet gets one region per terminal rather than an error.
            None if self.config.is_none() => cfg.regions = cfg.regions.min(cfg.terminals.max(1)),
            None => {}
        }
        if let Some(k) = self.fault_scale {
            if !(k.is_finite() && k >= 0.0) {
                anyhow::bail!("--fault-scale must be a non-negative number, not {k}");
            }
            cfg.faults.scale_faults(k);
        }
        Ok(cfg)
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let cfg = args.sim_config()?;
    if let Some(draw) = args.physics_draw {
        // Everything a rerun or an analyst needs to know the fleet's physics.
        eprintln!(
            "simulate: physics draw {draw}: {}",
            serde_json::to_string(&cfg).context("serialising the configuration")?
        );
    }
    let labels = match &args.labels {
        Some(p) => format!(" (labels in {})", p.display()),
        None => String::new(),
    };
    if let Some(brokers) = &args.kafka {
        if !(args.speed.is_finite() && args.speed >= 0.0) {
            anyhow::bail!("--speed must be 0 (as fast as possible) or a positive number, not {}", args.speed);
        }
        let sim = termwatch_sim::Simulator::new(cfg).context("simulate")?;
        if let Some(path) = &args.labels {
            let mut text = String::new();
            for l in sim.labels() {
                text.push_str(&serde_json::to_string(l).context("serialising a label")?);
                text.push('\n');
            }
            std::fs::write(path, text).with_context(|| format!("cannot write labels file {}", path.display()))?;
        }
        let started = std::time::Instant::now();
        let progress = crate::stream::Produced::default();
        crate::stream::produce(sim, brokers, &args.topic, args.speed, &progress)?;
        let n = progress.records.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "simulate: {n} records ({} damaged) streamed to {brokers} topic {} in {:.2} s{labels}",
            progress.damaged.load(std::sync::atomic::Ordering::Relaxed),
            args.topic,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let Some(out) = &args.out else { anyhow::bail!("give --out FILE or --kafka BROKERS") };
    let summary = termwatch_sim::write_files(cfg, out, args.labels.as_deref()).context("simulate")?;
    eprintln!("simulate: {summary}; wrote {}{labels}", out.display());
    Ok(())
}
