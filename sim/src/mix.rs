//! Swarm testing: the seed derives the fault mix.
//!
//! Like TigerBeetle's VOPR, a run does not use one fixed blend of faults: each fault a scenario
//! allows is switched on or off by the seed, and its magnitude drawn from a range, so that some
//! seeds see heavy loss and nothing else, others reordering plus partitions, and so on. Rare
//! interactions that a uniform blend would drown out get their turn. The mix is printed with the
//! seed so that a failure says what it ran under.

use std::fmt;

use svcnet_core::rng::SplitMix64;

/// Whether a scenario allows a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    /// Never.
    Off,
    /// On for about half the seeds.
    Swarm,
    /// Always (the scenario's subject).
    On,
}

/// Which faults a scenario allows, and its workload size.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub loss: Knob,
    pub dup: Knob,
    pub corrupt: Knob,
    pub reorder: Knob,
    pub bandwidth: Knob,
    pub partitions: Knob,
    pub oneway: Knob,
    pub crashes: Knob,
    pub resets: Knob,
    /// Streams per run, drawn from this range.
    pub streams: (u32, u32),
}

impl Profile {
    /// Everything off; scenarios switch on what they test.
    pub const QUIET: Profile = Profile {
        loss: Knob::Off,
        dup: Knob::Off,
        corrupt: Knob::Off,
        reorder: Knob::Off,
        bandwidth: Knob::Off,
        partitions: Knob::Off,
        oneway: Knob::Off,
        crashes: Knob::Off,
        resets: Knob::Off,
        streams: (8, 32),
    };
}

/// The faults of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    /// Probability a segment (core level) or link tick (turmoil) loses a packet.
    pub loss: f64,
    /// Probability a segment is delivered twice.
    pub dup: f64,
    /// Probability a segment is corrupted in flight (caught by its checksum, then lost).
    pub corrupt: f64,
    /// Base one-way latency.
    pub latency_ms: u64,
    /// Extra random delay per packet; packets overtake each other when it exceeds their spacing.
    pub jitter_ms: u64,
    /// Link rate in bytes per second; 0 is unlimited.
    pub bandwidth: u64,
    /// Two-way partitions that later heal.
    pub partitions: bool,
    /// One-way partitions that later heal.
    pub oneway: bool,
    /// Node crashes and restarts.
    pub crashes: bool,
    /// Probability that a stream's service end dies mid-stream.
    pub resets: f64,
    /// Streams opened in the run.
    pub streams: u32,
}

fn on(rng: &mut SplitMix64, k: Knob) -> bool {
    match k {
        Knob::Off => false,
        Knob::On => true,
        Knob::Swarm => rng.below(2) == 0,
    }
}

fn frac(rng: &mut SplitMix64, max: f64) -> f64 {
    (rng.below(1_000_001) as f64 / 1_000_000.0) * max
}

impl Mix {
    /// Derives the mix from the seed within what `p` allows. The draws happen in a fixed order,
    /// so a mix depends on the seed alone.
    pub fn derive(seed: u64, p: &Profile) -> Mix {
        // A different stream of numbers than the run's own RNG (same seed, other constant).
        let mut rng = SplitMix64::new(seed ^ 0x5717_a1e0_0f00_d5ee);
        let loss = if on(&mut rng, p.loss) {
            0.005 + frac(&mut rng, 0.15)
        } else {
            0.0
        };
        let dup = if on(&mut rng, p.dup) {
            frac(&mut rng, 0.05)
        } else {
            0.0
        };
        let corrupt = if on(&mut rng, p.corrupt) {
            frac(&mut rng, 0.03)
        } else {
            0.0
        };
        let latency_ms = 1 + rng.below(60);
        let jitter_ms = if on(&mut rng, p.reorder) {
            1 + rng.below(40)
        } else {
            0
        };
        let bandwidth = if on(&mut rng, p.bandwidth) {
            // 256 KB/s .. 32 MB/s
            (256 * 1024) << rng.below(8)
        } else {
            0
        };
        let partitions = on(&mut rng, p.partitions);
        let oneway = on(&mut rng, p.oneway);
        let crashes = on(&mut rng, p.crashes);
        let resets = if on(&mut rng, p.resets) {
            0.05 + frac(&mut rng, 0.3)
        } else {
            0.0
        };
        let (lo, hi) = p.streams;
        let streams = lo + rng.below(u64::from(hi.saturating_sub(lo)) + 1) as u32;
        Mix {
            loss,
            dup,
            corrupt,
            latency_ms,
            jitter_ms,
            bandwidth,
            partitions,
            oneway,
            crashes,
            resets,
            streams,
        }
    }
}

fn pct(f: &mut fmt::Formatter<'_>, name: &str, v: f64) -> fmt::Result {
    if v > 0.0 {
        write!(f, " {name}={:.1}%", v * 100.0)
    } else {
        write!(f, " {name}=off")
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "latency={}ms", self.latency_ms)?;
        if self.jitter_ms > 0 {
            write!(f, " jitter={}ms", self.jitter_ms)?;
        } else {
            write!(f, " jitter=off")?;
        }
        pct(f, "loss", self.loss)?;
        pct(f, "dup", self.dup)?;
        pct(f, "corrupt", self.corrupt)?;
        if self.bandwidth > 0 {
            write!(f, " bw={}KB/s", self.bandwidth / 1024)?;
        } else {
            write!(f, " bw=off")?;
        }
        let flag = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            " partitions={} oneway={} crashes={}",
            flag(self.partitions),
            flag(self.oneway),
            flag(self.crashes)
        )?;
        pct(f, "svc-dies", self.resets)?;
        write!(f, " streams={}", self.streams)
    }
}
