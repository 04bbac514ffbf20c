//! The event log of a run and its hash.
//!
//! Every observable step (a segment delivered, a stream opened, a fault applied, a dial) is
//! recorded as `(simulated time, event name, numbers)`. Only values that are reproducible go in:
//! times and sizes, never packet bytes (quinn's TLS key exchange draws OS randomness, so
//! ciphertexts differ between runs while their sizes and timings do not). The blake3 hash of the
//! log is the run's fingerprint: `just sim-check` compares it across processes.

/// A running event log.
pub struct Trace {
    hasher: blake3::Hasher,
    events: u64,
    log: Option<Vec<String>>,
}

impl Trace {
    pub fn new(keep_log: bool) -> Trace {
        Trace {
            hasher: blake3::Hasher::new(),
            events: 0,
            log: keep_log.then(Vec::new),
        }
    }

    /// Records one event at `micros` of simulated time with up to a few numbers.
    pub fn record(&mut self, micros: u64, event: &str, values: &[u64]) {
        self.events += 1;
        self.hasher.update(&micros.to_le_bytes());
        self.hasher.update(event.as_bytes());
        self.hasher.update(&[0xff]);
        for v in values {
            self.hasher.update(&v.to_le_bytes());
        }
        if let Some(log) = &mut self.log {
            log.push(format!("{micros:>12} {event} {values:?}"));
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn hash_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }

    pub fn take_log(&mut self) -> Vec<String> {
        self.log.take().unwrap_or_default()
    }
}
