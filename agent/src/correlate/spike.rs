//! Spike detection for one (proxy, upstream) flow: failures in a sliding window against
//! the configured threshold, raised by the flow's own baseline so that an upstream that
//! always fails a little does not open incidents.

use std::{collections::BTreeMap, collections::VecDeque, time::SystemTime};

use crate::model::failure::FailureKind;

/// Seconds of failure history before the window that make up a flow's baseline.
const BASELINE_SECONDS: u64 = 60;
/// Seconds a flow remembers counts for: the baseline and the longest window (60 s).
const RING_SECONDS: usize = 128;
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

/// Counts per second over the last [`RING_SECONDS`].
#[derive(Debug)]
struct PerSecond<T> {
    counts: [T; RING_SECONDS],
    second: u64,
}

impl<T: Copy + Default + Into<u64>> PerSecond<T> {
    fn new(mono: u64) -> Self {
        Self {
            counts: [T::default(); RING_SECONDS],
            second: mono / 1_000_000_000,
        }
    }

    /// The slot of the second of `mono`, seconds skipped since zeroed.
    fn slot(&mut self, mono: u64) -> &mut T {
        let second = mono / 1_000_000_000;
        if second > self.second {
            let steps = (second - self.second).min(RING_SECONDS as u64);
            for s in 1..=steps {
                self.counts[((self.second + s) % RING_SECONDS as u64) as usize] = T::default();
            }
            self.second = second;
        }
        &mut self.counts[(second % RING_SECONDS as u64) as usize]
    }

    /// The sum over the seconds `from_back..to_back` before the second of `mono` (0: that
    /// second itself).
    fn sum(&mut self, mono: u64, from_back: u64, to_back: u64) -> u64 {
        self.slot(mono);
        let now = mono / 1_000_000_000;
        (from_back..to_back.min(RING_SECONDS as u64))
            .filter(|back| *back <= now)
            .map(|back| self.counts[((now - back) % RING_SECONDS as u64) as usize].into())
            .sum()
    }
}

/// What a flow remembers between incidents.
#[derive(Debug)]
pub struct Window {
    /// Failures inside the current window, oldest first.
    failures: VecDeque<Failure>,
    /// Failures per second (outside incidents), for the baseline: the minute before the
    /// window. u16: a second with more failures than that is a spike anyway.
    baseline: PerSecond<u16>,
    /// Successful connects per second (from the kernel's aggregates), for the ratio.
    successes: PerSecond<u32>,
}

/// What makes a window a spike.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Failures in one window, at least.
    pub threshold: u32,
    pub window_ns: u64,
    /// Failures among attempts (failures and successful connects) in the window, at least.
    pub min_failure_ratio: f64,
}

impl Window {
    pub fn new(mono: u64) -> Self {
        Self {
            failures: VecDeque::new(),
            baseline: PerSecond::new(mono),
            successes: PerSecond::new(mono),
        }
    }

    /// Counts successful connects of the flow (the kernel's aggregates, read each second).
    pub fn succeeded(&mut self, mono: u64, count: u64) {
        let slot = self.successes.slot(mono);
        *slot = slot.saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
    }

    /// Counts `count` of `what` at `mono`; the spike when the window now holds enough,
    /// or on any failure when `strong` evidence stands behind it (and the window starts
    /// over).
    pub fn push(
        &mut self,
        (mono, time): (u64, SystemTime),
        what: Observed,
        count: u64,
        rule: Rule,
        strong: bool,
    ) -> Option<Spike> {
        let window_ns = rule.window_ns;
        let required = if strong { 1 } else { self.required(rule, mono) };
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

    /// Failures needed in one window to call it a spike: the configured threshold, more
    /// when this flow already fails steadily (its baseline), and more when its failures
    /// would be a small part of its attempts (an upstream that always fails a little).
    fn required(&mut self, rule: Rule, mono: u64) -> u64 {
        let window_seconds = rule.window_ns.div_ceil(1_000_000_000);
        let before = self
            .baseline
            .sum(mono, window_seconds, window_seconds + BASELINE_SECONDS);
        let per_window = before as f64 / BASELINE_SECONDS as f64 * rule.window_ns as f64 / 1e9;
        let successes = self.successes.sum(mono, 0, window_seconds) as f64;
        let ratio = rule.min_failure_ratio.clamp(0.0, 0.99);
        // failures / (failures + successes) >= ratio  ⇔  failures >= successes·r/(1−r)
        let by_ratio = (successes * ratio / (1.0 - ratio)).ceil() as u64;
        u64::from(rule.threshold)
            .max((per_window * BASELINE_FACTOR).ceil() as u64)
            .max(by_ratio)
    }

    fn count_for_baseline(&mut self, mono: u64, count: u64) {
        let slot = self.baseline.slot(mono);
        *slot = slot.saturating_add(u16::try_from(count).unwrap_or(u16::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::failure::FailureKind;

    const SEC: u64 = 1_000_000_000;
    const RULE: Rule = Rule {
        threshold: 3,
        window_ns: 30 * SEC,
        min_failure_ratio: 0.01,
    };
    const REFUSED: Observed = Observed::Failure(FailureKind::ECONNREFUSED);

    fn push(w: &mut Window, mono: u64, strong: bool) -> Option<Spike> {
        w.push((mono, SystemTime::UNIX_EPOCH), REFUSED, 1, RULE, strong)
    }

    #[test]
    fn a_handful_in_the_window_is_a_spike() {
        let mut w = Window::new(100 * SEC);
        assert!(push(&mut w, 100 * SEC, false).is_none());
        assert!(push(&mut w, 110 * SEC, false).is_none());
        let spike = push(&mut w, 125 * SEC, false).expect("3 within 30 s");
        assert_eq!(spike.total, 3);
        assert_eq!(spike.first_mono, 100 * SEC);
    }

    #[test]
    fn failures_further_apart_than_the_window_are_not() {
        let mut w = Window::new(100 * SEC);
        for i in 0..5 {
            assert!(push(&mut w, (100 + 20 * i) * SEC, false).is_none(), "{i}");
        }
    }

    #[test]
    fn strong_evidence_opens_on_the_first_failure() {
        let mut w = Window::new(100 * SEC);
        assert_eq!(push(&mut w, 100 * SEC, true).map(|s| s.total), Some(1));
    }

    #[test]
    fn failures_drowned_in_successes_are_not() {
        let mut w = Window::new(100 * SEC);
        // 50 successful connects a second: 3 failures are 0.2 % of 1500.
        for s in 100..130 {
            w.succeeded(s * SEC, 50);
        }
        for i in 0..3 {
            assert!(push(&mut w, 129 * SEC + i, false).is_none());
        }
        // 1 % of 1500 takes 16 failures in all (15.15…, rounded up): the window's own
        // failures are not its baseline.
        let mut spike = None;
        for i in 3..20 {
            spike = spike.or(push(&mut w, 129 * SEC + i, false));
        }
        assert_eq!(spike.map(|s| s.total), Some(16));
    }
}
