//! Dynamic-batching tuner: keeps a model version's p99 latency under its SLO while
//! maximising throughput, by adjusting the Triton-style batcher [`Setting`] once per
//! measurement interval.
//!
//! # Algorithm
//!
//! The tuner hill-climbs over a small grid: a geometric ladder of queue delays (0, 250,
//! 500, … µs, doubling, plus the configured bounds) × preferred batch sizes (1, 2, 4, … up
//! to `max_batch_size`). A latency breach is answered at once; everything else is a
//! cautious one-step probe judged against a fresh measurement of where it came from.
//!
//! * **Breach** (p99 > SLO): if the breach is a probe's doing, revert to the setting the
//!   probe left. Otherwise back off multiplicatively: the delay drops to at most half its
//!   value, further in proportion to how far p99 overshot, and the preferred size drops a
//!   rung (about half). Either way the breaching setting is *struck*: it and every setting
//!   that batches at least as hard (larger-or-equal delay and preferred size) are off limits
//!   until the load moves by more than a quarter or [`STRIKE_TTL`] intervals pass, so the
//!   climber does not walk straight back into the wall. A downward probe that breaches
//!   strikes the other way, ruling out batching even less: that is an overloaded instance
//!   which only keeps up with big batches.
//! * **Probe**: from the current setting, try one neighbour per interval in the order delay
//!   up, preferred size up, delay down, preferred size down. Upward probes must start and
//!   end with headroom (p99 ≤ [`HEADROOM`] × SLO): a setting kept right at the SLO would
//!   break it on the next noisy interval. A probe is kept if throughput rose by more than
//!   noise, or — at unchanged throughput — if it was an upward step that did not measurably
//!   raise p99 (larger batches spend less instance time per request, which is spare capacity
//!   for bursts), or a downward step that measurably cut p99. A kept probe is followed by
//!   another step the same way; a rejected one is reverted and the next direction tried.
//!   An upward probe that used up the headroom is struck like a breach: a setting that close
//!   to the wall breaks the SLO on some later, noisier interval, so retrying it every round
//!   would be a slow way of breaching.
//! * **Settle**: when a whole round of probes keeps nothing, hold for [`SETTLE`] intervals
//!   and then probe again, so the tuner follows load that drifts.
//!
//! Noise is judged per comparison: request counts are roughly Poisson, so a throughput ratio
//! measured over n₁ and n₂ requests has a relative standard error near √(1/n₁ + 1/n₂); a
//! change counts only beyond two of those. Intervals with fewer than `min_requests` requests
//! carry too little signal and are ignored entirely.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// How far p99 may sit under the SLO before the tuner dares to batch harder; the margin
/// absorbs the p99 noise of one interval and the latency added by the step itself.
pub const HEADROOM: f64 = 0.8;

/// Intervals to hold a settled setting before probing again.
pub const SETTLE: u64 = 10;

/// Intervals a struck setting stays off limits when the load does not move.
pub const STRIKE_TTL: u64 = 120;

/// Intervals to hold after a back-off, so the probe that follows is not judged on the
/// queue the breach left behind.
const COOL_DOWN: u64 = 2;

/// Relative p99 change treated as real: one interval's p99 rests on its slowest 1% of
/// requests and is easily this noisy.
const P99_TOLERANCE: f64 = 0.1;

/// Floor on the relative throughput change treated as real, for very busy intervals.
const MIN_NOISE: f64 = 0.02;

/// Relative throughput change past which the load is taken to have moved and strikes,
/// learned under the old load, are forgotten.
const LOAD_SHIFT: f64 = 1.25;

/// First rung above zero of the delay ladder; each further rung doubles it.
const FIRST_DELAY_US: u64 = 250;

/// Dynamic batcher settings for one model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub max_queue_delay_us: u64,
    pub preferred_batch_size: u64,
}

/// Target and bounds for one model version's tuner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunerConfig {
    /// The p99 latency every interval should stay under.
    pub slo_ms: f64,
    pub max_batch_size: u64,
    pub min_delay_us: u64,
    pub max_delay_us: u64,
    /// Intervals with fewer requests are ignored: their p99 is a handful of samples.
    pub min_requests: u64,
}

/// What one measurement interval saw under the setting in force.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub p99_ms: f64,
    /// Requests per second.
    pub throughput: f64,
    pub requests: u64,
}

/// Indices into the delay and preferred-size ladders.
type Pos = (usize, usize);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    DelayUp,
    PreferredUp,
    DelayDown,
    PreferredDown,
}

const DIRECTIONS: [Direction; 4] = [
    Direction::DelayUp,
    Direction::PreferredUp,
    Direction::DelayDown,
    Direction::PreferredDown,
];

impl Direction {
    fn upward(self) -> bool {
        matches!(self, Direction::DelayUp | Direction::PreferredUp)
    }

    fn describe(self) -> &'static str {
        match self {
            Direction::DelayUp => "delay up",
            Direction::PreferredUp => "preferred batch size up",
            Direction::DelayDown => "delay down",
            Direction::PreferredDown => "preferred batch size down",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Keep the setting; start a round of probes once `tick` reaches `until`.
    Hold { until: u64 },
    /// The next observation measures the current setting; then probe from `next` on.
    Measure { next: usize, kept_any: bool },
    /// A neighbour is on trial against `base`, measured at `from` just before.
    Probe {
        from: Pos,
        base: Observation,
        dir: usize,
        kept_any: bool,
    },
}

/// Which settings a strike rules out besides its own.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Extends {
    /// Batching harder: more waiting only adds latency.
    Harder,
    /// Batching less: an overloaded instance keeps up only with big batches.
    Softer,
}

/// A setting that broke the SLO, with the throughput of the load it broke under.
#[derive(Debug, Clone, Copy)]
struct Strike {
    pos: Pos,
    extends: Extends,
    /// Measured at the setting the tuner fell back to; `None` until that measurement
    /// arrives, because the breaching interval's own throughput reflects the bad setting.
    throughput: Option<f64>,
    until: u64,
}

/// Tunes one model version's dynamic batcher; feed it one [`Observation`] per interval.
#[derive(Debug, Clone)]
pub struct BatchTuner {
    cfg: TunerConfig,
    delays: Vec<u64>,
    preferred: Vec<u64>,
    at: Pos,
    phase: Phase,
    tick: u64,
    strikes: Vec<Strike>,
    /// Why `new` had to move the initial setting; told to the caller on the first observe.
    clamped: Option<String>,
}

impl BatchTuner {
    /// The initial setting is clamped into the configured bounds and joins the ladders, so
    /// the tuner starts exactly where the batcher is. If clamping moved it, the first
    /// [`BatchTuner::observe`] reports the corrected setting.
    pub fn new(cfg: TunerConfig, initial: Setting) -> Self {
        let max_delay = cfg.max_delay_us.max(cfg.min_delay_us);
        let max_batch = cfg.max_batch_size.max(1);
        let start = Setting {
            max_queue_delay_us: initial
                .max_queue_delay_us
                .clamp(cfg.min_delay_us, max_delay),
            preferred_batch_size: initial.preferred_batch_size.clamp(1, max_batch),
        };

        let mut delays = BTreeSet::from([cfg.min_delay_us, max_delay, start.max_queue_delay_us]);
        let mut d = FIRST_DELAY_US;
        while d < max_delay {
            if d > cfg.min_delay_us {
                delays.insert(d);
            }
            d *= 2;
        }
        let mut preferred = BTreeSet::from([1, max_batch, start.preferred_batch_size]);
        let mut p = 2;
        while p < max_batch {
            preferred.insert(p);
            p *= 2;
        }
        let delays: Vec<u64> = delays.into_iter().collect();
        let preferred: Vec<u64> = preferred.into_iter().collect();
        let at = (
            delays
                .binary_search(&start.max_queue_delay_us)
                .expect("inserted"),
            preferred
                .binary_search(&start.preferred_batch_size)
                .expect("inserted"),
        );
        let clamped = (start != initial).then(|| {
            format!(
                "initial setting {} is outside the configured bounds; clamped to {}",
                show(initial),
                show(start)
            )
        });
        Self {
            cfg,
            delays,
            preferred,
            at,
            phase: Phase::Measure {
                next: 0,
                kept_any: false,
            },
            tick: 0,
            strikes: Vec::new(),
            clamped,
        }
    }

    /// The setting the batcher should be running now.
    pub fn setting(&self) -> Setting {
        self.setting_at(self.at)
    }

    /// Digests one interval measured under [`BatchTuner::setting`]; returns the setting to
    /// apply next, with the reason, when it changes.
    pub fn observe(&mut self, obs: &Observation) -> Option<(Setting, String)> {
        let decision = self.decide(obs);
        match (decision, self.clamped.take()) {
            (None, Some(reason)) => Some((self.setting(), reason)),
            (decision, _) => decision,
        }
    }

    fn decide(&mut self, obs: &Observation) -> Option<(Setting, String)> {
        let valid = obs.requests >= self.cfg.min_requests
            && obs.requests > 0
            && obs.p99_ms.is_finite()
            && obs.throughput.is_finite()
            && obs.throughput > 0.0;
        if !valid {
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        self.strikes.retain(|s| s.until > tick);

        if obs.p99_ms > self.cfg.slo_ms {
            return self.on_breach(obs);
        }
        match self.phase {
            Phase::Hold { until } => {
                self.forget_strikes_if_load_moved(obs);
                if tick >= until {
                    self.probe_from(*obs, 0, false)
                } else {
                    None
                }
            }
            Phase::Measure { next, kept_any } => {
                self.forget_strikes_if_load_moved(obs);
                self.probe_from(*obs, next, kept_any)
            }
            Phase::Probe {
                from,
                base,
                dir,
                kept_any,
            } => match self.verdict(&base, obs, DIRECTIONS[dir]) {
                Some(why) => self.probe_from(*obs, dir, true).map(|(s, probe)| {
                    (
                        s,
                        format!("kept {} ({why}); {probe}", DIRECTIONS[dir].describe()),
                    )
                }),
                None => {
                    let reason = format!(
                        "reverting {}: throughput {:.0}/s vs {:.0}/s, p99 {:.2} ms vs {:.2} ms",
                        DIRECTIONS[dir].describe(),
                        obs.throughput,
                        base.throughput,
                        obs.p99_ms,
                        base.p99_ms
                    );
                    if DIRECTIONS[dir].upward() && obs.p99_ms > HEADROOM * self.cfg.slo_ms {
                        self.strike(self.at, Extends::Harder, Some(base.throughput));
                    }
                    self.at = from;
                    self.phase = Phase::Measure {
                        next: dir + 1,
                        kept_any,
                    };
                    Some((self.setting(), reason))
                }
            },
        }
    }

    fn on_breach(&mut self, obs: &Observation) -> Option<(Setting, String)> {
        let breached = self.at;
        let slo = self.cfg.slo_ms;
        if let Phase::Probe {
            from,
            base,
            dir,
            kept_any,
        } = self.phase
        {
            let extends = if DIRECTIONS[dir].upward() {
                Extends::Harder
            } else {
                Extends::Softer
            };
            self.strike(breached, extends, Some(base.throughput));
            self.at = from;
            self.phase = Phase::Measure {
                next: dir + 1,
                kept_any,
            };
            return Some((
                self.setting(),
                format!(
                    "p99 {:.2} ms > SLO {slo} ms while probing {}: reverting",
                    obs.p99_ms,
                    DIRECTIONS[dir].describe()
                ),
            ));
        }
        self.strike(breached, Extends::Harder, None);
        self.phase = Phase::Hold {
            until: self.tick + COOL_DOWN,
        };
        let factor = 0.5 * (slo / obs.p99_ms).min(1.0);
        let target = (self.delays[breached.0] as f64 * factor) as u64;
        let delay = match self.delays.iter().rposition(|&d| d <= target) {
            Some(i) => i.min(breached.0.saturating_sub(1)),
            None => 0,
        };
        self.at = (delay, breached.1.saturating_sub(1));
        if self.at == breached {
            return None;
        }
        Some((
            self.setting(),
            format!(
                "p99 {:.2} ms > SLO {slo} ms: backing off from {}",
                obs.p99_ms,
                show(self.setting_at(breached))
            ),
        ))
    }

    /// Starts the first allowed probe at or after direction `first`, judged against `base`
    /// (a measurement of the current setting). Ends the round when none is allowed: another
    /// round if this one kept something, otherwise a hold.
    fn probe_from(
        &mut self,
        base: Observation,
        first: usize,
        kept_any: bool,
    ) -> Option<(Setting, String)> {
        for (dir, &direction) in DIRECTIONS.iter().enumerate().skip(first) {
            let headroom = base.p99_ms <= HEADROOM * self.cfg.slo_ms;
            if direction.upward() && !headroom {
                continue;
            }
            let Some(to) = self.neighbour(self.at, direction) else {
                continue;
            };
            if self.struck(to) {
                continue;
            }
            self.phase = Phase::Probe {
                from: self.at,
                base,
                dir,
                kept_any,
            };
            self.at = to;
            return Some((
                self.setting(),
                format!(
                    "probing {} (p99 {:.2} ms, throughput {:.0}/s)",
                    direction.describe(),
                    base.p99_ms,
                    base.throughput
                ),
            ));
        }
        if kept_any {
            return self.probe_from(base, 0, false);
        }
        self.phase = Phase::Hold {
            until: self.tick + SETTLE,
        };
        None
    }

    /// Why the probe measured by `probe` should be kept over `base`, or `None` to revert.
    fn verdict(
        &self,
        base: &Observation,
        probe: &Observation,
        direction: Direction,
    ) -> Option<String> {
        let noise = (2.0 * (1.0 / base.requests as f64 + 1.0 / probe.requests as f64).sqrt())
            .max(MIN_NOISE);
        let gain = probe.throughput / base.throughput - 1.0;
        let p99_change = probe.p99_ms / base.p99_ms - 1.0;
        if direction.upward() && probe.p99_ms > HEADROOM * self.cfg.slo_ms {
            return None;
        }
        if gain > noise {
            return Some(format!("throughput {:+.1}%", 100.0 * gain));
        }
        if gain < -noise {
            return None;
        }
        let free_batching = direction.upward() && p99_change <= P99_TOLERANCE;
        let faster = !direction.upward() && p99_change < -P99_TOLERANCE;
        (free_batching || faster).then(|| {
            format!(
                "throughput unchanged, p99 {:+.1}%",
                100.0 * p99_change.max(-1.0)
            )
        })
    }

    fn neighbour(&self, (d, p): Pos, direction: Direction) -> Option<Pos> {
        match direction {
            Direction::DelayUp => (d + 1 < self.delays.len()).then_some((d + 1, p)),
            Direction::PreferredUp => (p + 1 < self.preferred.len()).then_some((d, p + 1)),
            Direction::DelayDown => d.checked_sub(1).map(|d| (d, p)),
            Direction::PreferredDown => p.checked_sub(1).map(|p| (d, p)),
        }
    }

    fn strike(&mut self, pos: Pos, extends: Extends, throughput: Option<f64>) {
        self.strikes.retain(|s| s.pos != pos);
        self.strikes.push(Strike {
            pos,
            extends,
            throughput,
            until: self.tick + STRIKE_TTL,
        });
    }

    /// Latency is assumed monotone in how hard the batcher waits, each way from a strike.
    fn struck(&self, (d, p): Pos) -> bool {
        self.strikes.iter().any(|s| match s.extends {
            Extends::Harder => d >= s.pos.0 && p >= s.pos.1,
            Extends::Softer => d <= s.pos.0 && p <= s.pos.1,
        })
    }

    /// Only called on measurements of a kept setting: a probe's throughput reflects the
    /// probe, not the load.
    fn forget_strikes_if_load_moved(&mut self, obs: &Observation) {
        self.strikes.retain_mut(|s| {
            let reference = *s.throughput.get_or_insert(obs.throughput);
            let ratio = obs.throughput / reference;
            (1.0 / LOAD_SHIFT..=LOAD_SHIFT).contains(&ratio)
        });
    }

    fn setting_at(&self, (d, p): Pos) -> Setting {
        Setting {
            max_queue_delay_us: self.delays[d],
            preferred_batch_size: self.preferred[p],
        }
    }
}

fn show(s: Setting) -> String {
    format!(
        "{} µs / preferred {}",
        s.max_queue_delay_us, s.preferred_batch_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TunerConfig {
        TunerConfig {
            slo_ms: 10.0,
            max_batch_size: 32,
            min_delay_us: 0,
            max_delay_us: 20_000,
            min_requests: 100,
        }
    }

    fn setting(max_queue_delay_us: u64, preferred_batch_size: u64) -> Setting {
        Setting {
            max_queue_delay_us,
            preferred_batch_size,
        }
    }

    const GREEDY: Setting = Setting {
        max_queue_delay_us: 0,
        preferred_batch_size: 1,
    };

    /// A noise-free model of `clients` clients in front of a batcher: gathering a batch of
    /// p takes (p − 1) × 4/clients ms, each doubling of the batch adds 20% throughput, and a
    /// preferred size above `clients` is never reached, so every batch waits the full delay.
    fn plant(clients: u64, s: Setting) -> Observation {
        let delay_ms = s.max_queue_delay_us as f64 / 1000.0;
        let gather_ms = |p: u64| (p - 1) as f64 * 4.0 / clients as f64;
        let (batch, wait_ms) = if s.preferred_batch_size == 1 || delay_ms == 0.0 {
            (1, 0.0)
        } else if s.preferred_batch_size > clients {
            (clients, delay_ms)
        } else if gather_ms(s.preferred_batch_size) <= delay_ms {
            (s.preferred_batch_size, gather_ms(s.preferred_batch_size))
        } else {
            let reached = (1..=s.preferred_batch_size)
                .rev()
                .find(|&p| gather_ms(p) <= delay_ms)
                .unwrap_or(1);
            (reached, delay_ms)
        };
        let throughput = clients as f64 * 125.0 * (1.0 + 0.2 * (batch as f64).log2());
        Observation {
            p99_ms: 4.0 + wait_ms,
            throughput,
            requests: throughput as u64,
        }
    }

    struct Trace {
        settings: Vec<Setting>,
        breaches: usize,
    }

    fn drive(
        tuner: &mut BatchTuner,
        intervals: usize,
        world: impl Fn(Setting) -> Observation,
    ) -> Trace {
        let mut trace = Trace {
            settings: Vec::new(),
            breaches: 0,
        };
        for _ in 0..intervals {
            let obs = world(tuner.setting());
            if obs.p99_ms > tuner.cfg.slo_ms {
                trace.breaches += 1;
            }
            let before = tuner.setting();
            match tuner.observe(&obs) {
                Some((s, _)) => assert_ne!(s, before, "only changes are reported"),
                None => assert_eq!(tuner.setting(), before, "silent changes"),
            }
            trace.settings.push(tuner.setting());
        }
        trace
    }

    #[test]
    fn climbs_to_the_largest_batch_the_load_can_fill_and_holds_it() {
        let mut tuner = BatchTuner::new(config(), GREEDY);
        let trace = drive(&mut tuner, 100, |s| plant(8, s));
        assert_eq!(usual(&trace.settings[40..]), setting(20_000, 8));
        assert_eq!(
            trace.breaches, 1,
            "preferred 16 is tried once, then struck for the rest of the run"
        );
        let held = trace.settings[40..]
            .iter()
            .filter(|&&s| s == setting(20_000, 8))
            .count();
        assert!(held >= 50, "settled: {held} of 60 intervals at the optimum");
        assert!(
            trace.settings[40..]
                .iter()
                .any(|&s| s != setting(20_000, 8)),
            "keeps re-probing while settled"
        );
    }

    /// The setting held most often: robust to catching the tuner mid-probe.
    fn usual(settings: &[Setting]) -> Setting {
        let mut counts = std::collections::BTreeMap::new();
        for s in settings {
            *counts
                .entry((s.max_queue_delay_us, s.preferred_batch_size))
                .or_insert(0) += 1;
        }
        let (&(d, p), _) = counts.iter().max_by_key(|&(_, n)| *n).expect("non-empty");
        setting(d, p)
    }

    #[test]
    fn forgets_struck_settings_when_the_load_moves() {
        let mut tuner = BatchTuner::new(config(), GREEDY);
        let before = drive(&mut tuner, 60, |s| plant(8, s));
        assert_eq!(usual(&before.settings[30..]), setting(20_000, 8));
        // Twice the clients can fill batches of 16, which the strike had ruled out.
        let after = drive(&mut tuner, 60, |s| plant(16, s));
        assert_eq!(usual(&after.settings[30..]), setting(20_000, 16));
    }

    #[test]
    fn strikes_rule_out_settings_on_their_own_side() {
        let mut tuner = BatchTuner::new(config(), GREEDY);
        tuner.strike((3, 2), Extends::Harder, None);
        assert!(tuner.struck((3, 2)) && tuner.struck((4, 2)) && tuner.struck((3, 5)));
        assert!(!tuner.struck((2, 2)) && !tuner.struck((4, 1)));
        tuner.strike((3, 2), Extends::Softer, None);
        assert!(tuner.struck((3, 2)) && tuner.struck((0, 0)) && tuner.struck((3, 1)));
        assert!(
            !tuner.struck((4, 2)),
            "a new strike on a setting replaces the old one"
        );
    }

    #[test]
    fn an_overloaded_instance_keeps_its_big_batches() {
        let cfg = TunerConfig {
            max_batch_size: 8,
            ..config()
        };
        let mut tuner = BatchTuner::new(cfg, setting(20_000, 8));
        // Only full batches keep up; anything smaller queues past the SLO.
        let trace = drive(&mut tuner, 100, |s| Observation {
            p99_ms: if s.preferred_batch_size < 8 {
                15.0
            } else {
                6.0
            },
            throughput: 2000.0,
            requests: 2000,
        });
        assert_eq!(trace.breaches, 1, "smaller batches are tried once");
        assert_eq!(usual(&trace.settings), setting(20_000, 8));
        assert!(
            !tuner.struck(tuner.at),
            "the strike must not rule out the big batches that work"
        );
    }

    #[test]
    fn backs_off_in_proportion_to_the_overshoot() {
        let mut tuner = BatchTuner::new(config(), setting(20_000, 32));
        let obs = Observation {
            p99_ms: 30.0,
            throughput: 1000.0,
            requests: 1000,
        };
        let (s, reason) = tuner.observe(&obs).expect("backs off");
        // 20 ms × ½ × 10/30 = 3.3 ms, rounded down the ladder; preferred size one rung down.
        assert_eq!(s, setting(2_000, 16));
        assert!(reason.contains("backing off"), "{reason}");
        let (s, _) = tuner.observe(&obs).expect("keeps backing off");
        assert_eq!(s, setting(250, 8));
    }

    #[test]
    fn a_mild_breach_still_backs_off_a_full_rung() {
        let mut tuner = BatchTuner::new(config(), setting(1_000, 4));
        let obs = Observation {
            p99_ms: 10.1,
            throughput: 1000.0,
            requests: 1000,
        };
        assert_eq!(tuner.observe(&obs).map(|(s, _)| s), Some(setting(250, 2)));
    }

    #[test]
    fn nothing_left_to_back_off_reports_nothing() {
        let mut tuner = BatchTuner::new(config(), GREEDY);
        let obs = Observation {
            p99_ms: 50.0,
            throughput: 1000.0,
            requests: 1000,
        };
        assert_eq!(tuner.observe(&obs), None);
        assert_eq!(tuner.setting(), GREEDY);
    }

    #[test]
    fn ignores_thin_or_broken_intervals() {
        let mut tuner = BatchTuner::new(config(), setting(20_000, 32));
        for obs in [
            Observation {
                p99_ms: 99.0,
                throughput: 99.0,
                requests: 99,
            },
            Observation {
                p99_ms: f64::NAN,
                throughput: 1000.0,
                requests: 1000,
            },
            Observation {
                p99_ms: 99.0,
                throughput: 0.0,
                requests: 1000,
            },
        ] {
            assert_eq!(tuner.observe(&obs), None, "{obs:?}");
        }
        assert_eq!(tuner.setting(), setting(20_000, 32));
    }

    #[test]
    fn never_leaves_the_configured_bounds() {
        let cfg = TunerConfig {
            min_delay_us: 100,
            max_delay_us: 5_000,
            max_batch_size: 12,
            ..config()
        };
        let mut tuner = BatchTuner::new(cfg, setting(100, 1));
        // More batching is always better here, so the tuner presses against the bounds.
        let trace = drive(&mut tuner, 60, |s| {
            let throughput = 1000.0 * (1.0 + s.max_queue_delay_us as f64 / 1000.0)
                + 500.0 * s.preferred_batch_size as f64;
            Observation {
                p99_ms: 2.0,
                throughput,
                requests: throughput as u64,
            }
        });
        for s in &trace.settings {
            assert!((100..=5_000).contains(&s.max_queue_delay_us), "{s:?}");
            assert!((1..=12).contains(&s.preferred_batch_size), "{s:?}");
        }
        assert_eq!(tuner.setting(), setting(5_000, 12));
    }

    #[test]
    fn an_out_of_bounds_initial_setting_is_clamped_and_reported() {
        let mut tuner = BatchTuner::new(config(), setting(50_000, 64));
        assert_eq!(tuner.setting(), setting(20_000, 32));
        let thin = Observation {
            p99_ms: 1.0,
            throughput: 1.0,
            requests: 1,
        };
        let (s, reason) = tuner.observe(&thin).expect("clamp is reported");
        assert_eq!(s, setting(20_000, 32));
        assert!(reason.contains("clamped"), "{reason}");
        assert_eq!(tuner.observe(&thin), None, "reported once");
    }

    #[test]
    fn an_off_ladder_initial_setting_is_kept_as_is() {
        let tuner = BatchTuner::new(config(), setting(3_000, 6));
        assert_eq!(tuner.setting(), setting(3_000, 6));
    }
}
