//! Spike detection for one (proxy, upstream) flow: failures in a sliding window against
//! the configured threshold, raised by the flow's own baseline so that an upstream that
//! always fails a little does not open incidents.

use std::{collections::BTreeMap, collections::VecDeque, time::SystemTime};

use crate::model::failure::FailureKind;

/// Seconds of failure history that make up a flow's baseline.
const BASELINE_SECONDS: usize = 60;
/// A spike must exceed this multiple of the baseline failure rate.
const BASELINE_FACTOR: f64 = 3.0;
/// Failures counted one by one in a window, at most (a window only has to reach the
/// threshold).
pub const WINDOW_CAP: usize = 10_000;

/// What a flow counts: failures of its upstream, or (for a flow with no upstream) the
/// proxy's own 5xx responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Observed {
    Failure(FailureKind),
    Response(u16),
}

#[derive(Debug, Clone)]
struct Failure {
    mono: u64,
    time: SystemTime,
    what: Observed,
    /// How many (responses arrive counted; failures one by one).
    count: u64,
}

/// The window's failures when they crossed the threshold.
#[derive(Debug)]
pub struct Spike {
    pub first_mono: u64,
    pub first_time: SystemTime,
    pub total: u64,
    pub kinds: BTreeMap<FailureKind, u64>,
    pub responses: BTreeMap<u16, u64>,
}

/// What a flow remembers between incidents.
#[derive(Debug)]
pub struct Window {
    /// Failures inside the current window, oldest first.
    failures: VecDeque<Failure>,
    /// Failures per second over the last minute (outside incidents), for the baseline.
    /// u16: a second with more failures than that is a spike anyway.
    per_second: [u16; BASELINE_SECONDS],
    baseline_second: u64,
}

impl Window {
    pub fn new(mono: u64) -> Self {
        Self {
            failures: VecDeque::new(),
            per_second: [0; BASELINE_SECONDS],
            baseline_second: mono / 1_000_000_000,
        }
    }

    /// Counts `count` of `what` at `mono`; the spike when the window now holds enough
    /// (and the window starts over).
    pub fn push(
        &mut self,
        mono: u64,
        time: SystemTime,
        what: Observed,
        count: u64,
        threshold: u32,
        window_ns: u64,
    ) -> Option<Spike> {
        let required = self.required(threshold, window_ns, mono);
        self.count_for_baseline(mono, count);
        self.failures.push_back(Failure {
            mono,
            time,
            what,
            count,
        });
        while self
            .failures
            .front()
            .is_some_and(|f| f.mono + window_ns < mono)
            || self.failures.len() > WINDOW_CAP
        {
            self.failures.pop_front();
        }
        let total: u64 = self.failures.iter().map(|f| f.count).sum();
        if total < required {
            return None;
        }
        let first = self.failures.front().expect("window is not empty");
        let mut spike = Spike {
            first_mono: first.mono,
            first_time: first.time,
            total,
            kinds: BTreeMap::new(),
            responses: BTreeMap::new(),
        };
        for f in &self.failures {
            match f.what {
                Observed::Failure(kind) => *spike.kinds.entry(kind).or_default() += f.count,
                Observed::Response(code) => *spike.responses.entry(code).or_default() += f.count,
            }
        }
        self.failures.clear();
        Some(spike)
    }

    /// Forgets the window (an incident closed: the next one starts afresh).
    pub fn clear(&mut self) {
        self.failures.clear();
    }

    /// Failures needed in one window to call it a spike: the configured threshold, or more
    /// when this flow already fails steadily (its baseline).
    fn required(&mut self, threshold: u32, window_ns: u64, mono: u64) -> u64 {
        self.advance_baseline(mono / 1_000_000_000);
        let per_minute: u32 = self.per_second.iter().map(|&n| u32::from(n)).sum();
        let per_window = f64::from(per_minute) / BASELINE_SECONDS as f64 * window_ns as f64 / 1e9;
        u64::from(threshold).max((per_window * BASELINE_FACTOR).ceil() as u64)
    }

    fn count_for_baseline(&mut self, mono: u64, count: u64) {
        let second = mono / 1_000_000_000;
        self.advance_baseline(second);
        let slot = &mut self.per_second[(second % BASELINE_SECONDS as u64) as usize];
        *slot = slot.saturating_add(u16::try_from(count).unwrap_or(u16::MAX));
    }

    fn advance_baseline(&mut self, second: u64) {
        if second <= self.baseline_second {
            return;
        }
        let steps = (second - self.baseline_second).min(BASELINE_SECONDS as u64);
        for s in 1..=steps {
            self.per_second[((self.baseline_second + s) % BASELINE_SECONDS as u64) as usize] = 0;
        }
        self.baseline_second = second;
    }
}
