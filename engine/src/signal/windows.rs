//! The statistics behind the rate-spike, credential-stuffing and novel-shape detectors: plain
//! data keyed by time in seconds, so tests drive them with a simulated clock.

use std::collections::{HashMap, HashSet};

/// Seconds in a rate window: the current one and a 59-second baseline.
pub const BUCKETS: usize = 60;
/// A spike is at least this many times the baseline mean, whatever its z-score: a workload
/// that changes its pace (pgbench switching from `-S` to TPC-B) is steady enough for tiny
/// deviations to have a large z (docs/signal.md).
pub const SPIKE_RATIO: f64 = 5.0;
/// …and more than this many times the busiest second of the baseline: a pace the tenant kept
/// within the last minute is its own, however idle it was in between (a test suite's client
/// that runs 1000 statements, waits three seconds and runs 1000 more).
pub const PEAK_RATIO: f64 = 2.0;

/// One tenant's statements per second over the last minute: this shard's own count and the
/// other shards' (reported once a second, [`RateWindow::unreported`] → [`RateWindow::remote`]).
///
/// The baseline is the tenant's *whole* traffic (own + reported); the current second is judged
/// on this shard's own count only. Own ≤ whole, so whatever the spread of a tenant's clients
/// over the shards (and however they move between them), a shard can only fire when the
/// tenant's whole traffic in that second passes the same test: a spike of the tenant, not of
/// its share on one shard.
#[derive(Clone, Debug)]
pub struct RateWindow {
    /// Per slot (`second % BUCKETS`): the second it holds, plus one (0: empty).
    tag: [u32; BUCKETS],
    own: [u32; BUCKETS],
    remote: [u32; BUCKETS],
    /// The second being judged (the baseline is of the seconds before it).
    now: u64,
    first_seen: u64,
    /// Baseline of `now`: mean, standard deviation, busiest second.
    mean: f64,
    std: f64,
    peak: f64,
    /// A report changed a second of the baseline: recompute it at the next statement.
    stale: bool,
    /// Fired in the current second already.
    fired: bool,
    /// Own seconds before this one were reported to the other shards.
    reported: u64,
    /// The latest second with an own statement.
    own_last: Option<u64>,
}

/// A rate verdict for one statement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Normal,
    /// The tenant just crossed the threshold this second (z-score).
    Spike(f64),
    /// Over it again in a second that already fired.
    StillSpiking,
}

impl RateWindow {
    pub fn new(sec: u64) -> RateWindow {
        RateWindow {
            tag: [0; BUCKETS],
            own: [0; BUCKETS],
            remote: [0; BUCKETS],
            now: sec,
            first_seen: sec,
            mean: 0.0,
            std: 0.0,
            peak: 0.0,
            stale: false,
            fired: false,
            reported: 0,
            own_last: None,
        }
    }

    /// The slot of second `t`, emptied if it held an older second; `None` if it holds a newer.
    fn slot(&mut self, t: u64) -> Option<usize> {
        let i = (t % BUCKETS as u64) as usize;
        let want = (t as u32).wrapping_add(1);
        if self.tag[i] != want {
            if (self.tag[i] as u64) > t + 1 {
                return None;
            }
            self.tag[i] = want;
            self.own[i] = 0;
            self.remote[i] = 0;
        }
        Some(i)
    }

    /// The tenant's whole count of second `t` as far as this shard knows it.
    fn total(&self, t: u64) -> u32 {
        let i = (t % BUCKETS as u64) as usize;
        if self.tag[i] == (t as u32).wrapping_add(1) {
            self.own[i].saturating_add(self.remote[i])
        } else {
            0
        }
    }

    fn baseline(&mut self) {
        self.stale = false;
        // The seconds before this one since the tenant was first seen, up to 59: a tenant's
        // baseline is its own history, not the zeros before it existed.
        let span = self
            .now
            .saturating_sub(self.first_seen)
            .min(BUCKETS as u64 - 1);
        if span == 0 {
            (self.mean, self.std, self.peak) = (0.0, 0.0, 0.0);
            return;
        }
        let n = span as f64;
        let (mut sum, mut sq, mut peak) = (0.0, 0.0, 0.0f64);
        for k in 1..=span {
            let c = self.total(self.now - k) as f64;
            sum += c;
            sq += c * c;
            peak = peak.max(c);
        }
        self.peak = peak;
        self.mean = sum / n;
        self.std = (sq / n - self.mean * self.mean).max(0.0).sqrt();
    }

    /// Counts one statement at `sec`. A spike: over `min_count`, at least [`SPIKE_RATIO`]
    /// times the baseline mean and more than [`PEAK_RATIO`] times its busiest second, and more
    /// than `z` standard deviations above it; only after
    /// `warmup` seconds of watching the tenant, and never in its first second (its first burst
    /// is how it starts, not a spike).
    pub fn hit(&mut self, sec: u64, z: f64, min_count: u64, warmup: u64) -> Rate {
        if sec > self.now {
            self.now = sec;
            self.fired = false;
            self.stale = true;
        }
        self.first_seen = self.first_seen.min(sec);
        let Some(i) = self.slot(sec) else {
            return Rate::Normal;
        };
        self.own[i] = self.own[i].saturating_add(1);
        self.own_last = Some(self.own_last.map_or(sec, |l| l.max(sec)));
        if sec < self.now {
            // A statement that started in an earlier second (counted there; not judged).
            return Rate::Normal;
        }
        if self.stale {
            self.baseline();
        }
        let c = self.own[i] as f64;
        // No judgment without a baseline: a tenant's first second (whatever `warmup`) is how
        // it starts, and `warmup` seconds more of watching it.
        if sec == self.first_seen
            || sec.saturating_sub(self.first_seen) < warmup
            || (c as u64) < min_count
            || c < SPIKE_RATIO * self.mean
            || c <= PEAK_RATIO * self.peak
            || c <= self.mean + z * self.std
        {
            return Rate::Normal;
        }
        if self.fired {
            return Rate::StillSpiking;
        }
        self.fired = true;
        let score = if self.std > 0.0 {
            (c - self.mean) / self.std
        } else {
            f64::INFINITY
        };
        Rate::Spike(score)
    }

    /// Another shard's count of the tenant's second `sec` (a finished second).
    pub fn remote(&mut self, sec: u64, n: u32) {
        if sec + (BUCKETS as u64) <= self.now {
            return;
        }
        self.first_seen = self.first_seen.min(sec);
        if let Some(i) = self.slot(sec) {
            self.remote[i] = self.remote[i].saturating_add(n);
            if sec < self.now {
                self.stale = true;
            }
        }
    }

    /// This shard's counts of the finished seconds (before `now_s`) not reported yet.
    pub fn unreported(&mut self, now_s: u64, out: &mut Vec<(u64, u32)>) {
        let Some(last) = self.own_last else { return };
        let from = self
            .reported
            .max(last.saturating_sub(BUCKETS as u64 - 1))
            .max(now_s.saturating_sub(BUCKETS as u64 - 1));
        let to = (last + 1).min(now_s);
        for t in from..to {
            let i = (t % BUCKETS as u64) as usize;
            if self.tag[i] == (t as u32).wrapping_add(1) && self.own[i] > 0 {
                out.push((t, self.own[i]));
            }
        }
        self.reported = self.reported.max(to);
    }

    pub fn last_second(&self) -> u64 {
        self.now.max(self.own_last.unwrap_or(0))
    }
}

/// Failed logins per (user, address) and per address, over a window.
#[derive(Debug, Default)]
pub struct Stuffing {
    pairs: HashMap<(String, String), (u64, u32)>,
    /// Address → (window start, failures, users seen).
    addrs: HashMap<String, (u64, u32, HashSet<String>)>,
}

/// Entries kept before stale ones are swept (an attacker cycling addresses cannot grow it).
const MAX_STUFFING_KEYS: usize = 4096;

/// What a failed login tripped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stuffed {
    /// This many failures of the user from the address in the window.
    User(u32),
    /// This many failures from the address, across this many users.
    Address(u32, usize),
}

impl Stuffing {
    fn sweep(&mut self, now: u64, window: u64) {
        if self.pairs.len() >= MAX_STUFFING_KEYS {
            self.pairs
                .retain(|_, (t, _)| now.saturating_sub(*t) < window);
            if self.pairs.len() >= MAX_STUFFING_KEYS {
                self.pairs.clear();
            }
        }
        if self.addrs.len() >= MAX_STUFFING_KEYS {
            self.addrs
                .retain(|_, (t, _, _)| now.saturating_sub(*t) < window);
            if self.addrs.len() >= MAX_STUFFING_KEYS {
                self.addrs.clear();
            }
        }
    }

    /// A failed login; what it trips (each threshold fires once per window, when reached).
    pub fn failed(
        &mut self,
        user: &str,
        addr: &str,
        now: u64,
        window: u64,
        per_user: u32,
        per_addr: u32,
    ) -> Vec<Stuffed> {
        self.sweep(now, window);
        let mut out = Vec::new();
        let p = self
            .pairs
            .entry((user.to_string(), addr.to_string()))
            .or_insert((now, 0));
        if now.saturating_sub(p.0) >= window {
            *p = (now, 0);
        }
        p.1 += 1;
        if p.1 == per_user {
            out.push(Stuffed::User(p.1));
        }
        let a = self
            .addrs
            .entry(addr.to_string())
            .or_insert_with(|| (now, 0, HashSet::new()));
        if now.saturating_sub(a.0) >= window {
            *a = (now, 0, HashSet::new());
        }
        a.1 += 1;
        if a.2.len() < 1024 {
            a.2.insert(user.to_string());
        }
        if a.1 == per_addr {
            out.push(Stuffed::Address(a.1, a.2.len()));
        }
        out
    }

    /// A successful login resets its (user, address).
    pub fn succeeded(&mut self, user: &str, addr: &str) {
        if !self.pairs.is_empty() {
            self.pairs.remove(&(user.to_string(), addr.to_string()));
        }
    }

    /// Whether the address is over its threshold in the current window.
    pub fn flagged(&self, addr: &str, now: u64, window: u64, per_addr: u32) -> bool {
        self.addrs
            .get(addr)
            .is_some_and(|(t, n, _)| now.saturating_sub(*t) < window && *n >= per_addr)
    }
}

/// Fingerprints seen, bounded: two generations (a lookup that hits the older one moves the key
/// to the newer; when the newer is full the older is dropped). Every key lives at least
/// `cap / 2` insertions after its last use: least recently seen go first.
#[derive(Debug, Default)]
pub struct Seen {
    young: HashSet<u64>,
    old: HashSet<u64>,
}

impl Seen {
    /// True if `key` is new.
    pub fn insert(&mut self, key: u64, cap: usize) -> bool {
        if self.young.contains(&key) {
            return false;
        }
        let known = self.old.remove(&key);
        if self.young.len() >= cap / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key);
        !known
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_a_steady_baseline_is_a_spike_once_per_second() {
        let mut w = RateWindow::new(0);
        // 60 s of 5 a second.
        for s in 0..60 {
            for _ in 0..5 {
                assert_eq!(w.hit(s, 3.0, 20, 10), Rate::Normal);
            }
        }
        // 20× in second 60.
        let mut spikes = 0;
        let mut still = 0;
        for _ in 0..100 {
            match w.hit(60, 3.0, 20, 10) {
                Rate::Spike(z) => {
                    assert!(z > 3.0);
                    spikes += 1
                }
                Rate::StillSpiking => still += 1,
                Rate::Normal => {}
            }
        }
        assert_eq!(spikes, 1);
        assert!(still > 70);
        // Back to normal the next second.
        assert_eq!(w.hit(61, 3.0, 20, 10), Rate::Normal);
    }

    #[test]
    fn a_quiet_tenants_first_burst_and_small_wobbles_are_not() {
        let mut w = RateWindow::new(0);
        // The first burst of five: under min_count.
        for _ in 0..5 {
            assert_eq!(w.hit(30, 3.0, 20, 0), Rate::Normal);
        }
        // A start-up ramp inside the warm-up.
        let mut w = RateWindow::new(0);
        for _ in 0..500 {
            assert_eq!(w.hit(1, 3.0, 20, 10), Rate::Normal);
        }
        // Steady 1000 ± 10 %: never a spike.
        let mut w = RateWindow::new(0);
        for s in 0..300u64 {
            let n = 900 + (s * 37 % 200);
            for _ in 0..n {
                assert_eq!(w.hit(s, 3.0, 100, 10), Rate::Normal, "second {s}");
            }
        }
    }

    #[test]
    fn resuming_a_pace_kept_within_the_minute_is_not_a_spike() {
        // First seen in second 1 (its first second is never judged).
        let mut w = RateWindow::new(1);
        let mut fired = 0;
        // 1000 in one second, idle for thirty, 1000 again: z and the 5× mean say spike (the
        // idle seconds pull the mean down); the tenant's own peak says no.
        for s in [1u64, 32] {
            for _ in 0..1000 {
                fired += usize::from(w.hit(s, 3.0, 100, 0) != Rate::Normal);
            }
        }
        assert_eq!(fired, 0);
        // Twice its peak and more is one.
        for _ in 0..2500 {
            fired += usize::from(matches!(w.hit(33, 3.0, 100, 0), Rate::Spike(_)));
        }
        assert_eq!(fired, 1);
    }

    #[test]
    fn stuffing_thresholds_window_and_reset() {
        let mut s = Stuffing::default();
        for i in 1..5 {
            assert!(s.failed("bob", "10.0.0.1", 0, 60, 5, 20).is_empty(), "{i}");
        }
        assert_eq!(
            s.failed("bob", "10.0.0.1", 1, 60, 5, 20),
            vec![Stuffed::User(5)]
        );
        s.succeeded("bob", "10.0.0.1");
        assert!(s.failed("bob", "10.0.0.1", 2, 60, 5, 20).is_empty());
        // Across users from one address.
        let mut fired = Vec::new();
        for i in 0..14 {
            fired.extend(s.failed(&format!("u{i}"), "10.0.0.1", 3, 60, 5, 20));
        }
        assert_eq!(fired, vec![Stuffed::Address(20, 15)]);
        assert!(s.flagged("10.0.0.1", 4, 60, 20));
        assert!(!s.flagged("10.0.0.1", 61, 60, 20));
        assert!(!s.flagged("10.0.0.2", 4, 60, 20));
    }

    #[test]
    fn seen_is_bounded_and_keeps_recent_keys() {
        let mut s = Seen::default();
        assert!(s.insert(1, 16));
        assert!(!s.insert(1, 16));
        for k in 100..10_000 {
            s.insert(k, 16);
            // Key 1 stays as long as it keeps being seen.
            if k % 4 == 0 {
                assert!(!s.insert(1, 16), "{k}");
            }
        }
        assert!(s.len() <= 16);
        assert!(s.insert(100, 16), "long unseen: forgotten");
    }
}
