//! Deterministic closed-loop simulations of the bandit and the batching tuner.
//!
//! Every bound asserted here is stated in the test's name or message; the comments next to
//! the bounds say how much slack they had across many seeds when they were set, and the
//! ignored `seed_sweep_*` tests at the bottom re-derive those numbers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use nexus_optimizer::bandit::{Bandit, Guardrails, pick};
use nexus_optimizer::tuner::{BatchTuner, Observation, Setting, TunerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};

// ---------------------------------------------------------------------------------------
// Bandit
// ---------------------------------------------------------------------------------------

/// Events between weight updates, as the platform does it.
const UPDATE_EVERY: usize = 100;

#[derive(Clone, Copy)]
enum Rewards {
    Bernoulli([f64; 2]),
    Gaussian { means: [f64; 2], sd: f64 },
}

impl Rewards {
    fn means(self) -> [f64; 2] {
        match self {
            Rewards::Bernoulli(p) => p,
            Rewards::Gaussian { means, .. } => means,
        }
    }

    fn draw(self, arm: usize, rng: &mut StdRng) -> f64 {
        match self {
            Rewards::Bernoulli(p) => f64::from(u8::from(rng.random::<f64>() < p[arm])),
            Rewards::Gaussian { means, sd } => {
                Normal::new(means[arm], sd).expect("sd > 0").sample(rng)
            }
        }
    }
}

struct BanditRun {
    /// Weight of the better arm after each update.
    best_weight: Vec<f64>,
    /// Σ over events of (best mean − mean of the routed arm).
    regret: f64,
}

/// Routes `events` requests with `pick` on the live weights, arm "2" being the better one,
/// and checks the guardrails on every single update.
fn run_bandit(rewards: Rewards, events: usize, seed: u64, guard: Guardrails) -> BanditRun {
    let arms = ["1".to_string(), "2".to_string()];
    let means = rewards.means();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bandit = Bandit::new();
    bandit.set_arms(&arms);
    let mut run = BanditRun {
        best_weight: Vec::new(),
        regret: 0.0,
    };
    for event in 1..=events {
        let arm = pick(bandit.weights(), rng.random()).expect("two arms with weight");
        let i = usize::from(arm == "2");
        run.regret += means[1] - means[i];
        let reward = rewards.draw(i, &mut rng);
        bandit.observe(&arms[i], reward);
        if event % UPDATE_EVERY == 0 {
            let before = bandit.weights().clone();
            let update = bandit.update_weights(&mut rng, &guard);
            let after = bandit.weights();
            if let Some(w) = &update {
                assert_eq!(w, after, "returned weights are the ones in force");
            } else {
                assert_eq!(&before, after, "no update means no change");
            }
            check_guardrails(&before, after, &guard);
            run.best_weight.push(after["2"]);
        }
    }
    run
}

fn check_guardrails(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, g: &Guardrails) {
    let total: f64 = after.values().sum();
    assert!((total - 1.0).abs() < 1e-12, "weights sum to 1, got {total}");
    for (arm, w) in after {
        assert!(
            *w >= g.min_share - 1e-12,
            "min_share {} violated: {arm} has {w}",
            g.min_share
        );
        let shift = (w - before[arm]).abs();
        assert!(
            shift <= g.max_shift + 1e-12,
            "max_shift {} violated: {arm} moved {shift}",
            g.max_shift
        );
    }
}

/// Seeds per scenario. The bounds below come from `seed_sweep_bandit` (seeds 0..400).
const SEEDS: [u64; 2] = [1, 2];
/// Events per run.
const HORIZON: usize = 8000;
/// The better arm must hold ≥ 90% of traffic at every update from this event on. Over 400
/// seeds the last dip below 0.9 came by event 2300–3200 (99th percentile, by scenario); the
/// worst single runs took 3900–6200 events, after first backing the wrong arm.
const SETTLED_BY: usize = 4000;
/// Regret must stay under this fraction of a fixed 50/50 split's regret. The 5% floor alone
/// costs 10% of it; over 400 seeds the median was 0.13, the 99th percentile 0.21–0.22 and
/// the worst run 0.26–0.40.
const REGRET_FRACTION: f64 = 0.25;

fn assert_bandit_learns(rewards: Rewards) {
    let means = rewards.means();
    let split_regret = HORIZON as f64 * (means[1] - means[0]) / 2.0;
    for seed in SEEDS {
        let run = run_bandit(rewards, HORIZON, seed, Guardrails::default());
        let from = SETTLED_BY / UPDATE_EVERY - 1;
        let worst = run.best_weight[from..]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        assert!(
            worst >= 0.9,
            "seed {seed}: better arm below 90% of traffic after event {SETTLED_BY} (min {worst:.3})"
        );
        assert!(
            run.regret <= REGRET_FRACTION * split_regret,
            "seed {seed}: regret {:.1} > {REGRET_FRACTION} × 50/50 regret {split_regret:.1}",
            run.regret
        );
    }
}

#[test]
fn bandit_bernoulli_5_vs_10_pct_gets_90pct_by_event_4000_regret_under_25pct_of_split() {
    assert_bandit_learns(Rewards::Bernoulli([0.05, 0.10]));
}

#[test]
fn bandit_bernoulli_50_vs_60_pct_gets_90pct_by_event_4000_regret_under_25pct_of_split() {
    assert_bandit_learns(Rewards::Bernoulli([0.5, 0.6]));
}

#[test]
fn bandit_gaussian_1_0_vs_1_2_gets_90pct_by_event_4000_regret_under_25pct_of_split() {
    assert_bandit_learns(Rewards::Gaussian {
        means: [1.0, 1.2],
        sd: 1.0,
    });
}

#[test]
fn bandit_frozen_weights_never_move() {
    let guard = Guardrails {
        frozen: true,
        ..Guardrails::default()
    };
    let run = run_bandit(Rewards::Bernoulli([0.05, 0.5]), 2000, 7, guard);
    assert!(
        run.best_weight.iter().all(|&w| w == 0.5),
        "frozen split moved"
    );
}

#[test]
fn bandit_tight_guardrails_hold_on_every_update() {
    // `run_bandit` asserts the guardrails on every update; these are tight enough that the
    // projection binds most of the time.
    let guard = Guardrails {
        min_share: 0.2,
        max_shift: 0.03,
        frozen: false,
    };
    let run = run_bandit(Rewards::Bernoulli([0.1, 0.5]), 3000, 11, guard);
    let last = *run.best_weight.last().expect("updates ran");
    assert!(
        (last - 0.8).abs() < 1e-9,
        "a clear winner ends at the 1 − min_share cap, got {last}"
    );
}

// ---------------------------------------------------------------------------------------
// Dynamic batcher
// ---------------------------------------------------------------------------------------

const MAX_BATCH: usize = 32;
/// Service time of a batch: fixed cost plus per-row cost, so batching pays off.
const SERVICE_FIXED_NS: u64 = 2_000_000;
const SERVICE_PER_ROW_NS: u64 = 250_000;
const INTERVAL_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug)]
enum Load {
    /// `clients` each send a request, wait for the reply, think for an exponential time
    /// with mean `think_ms`, and send the next.
    Closed { clients: usize, think_ms: f64 },
    /// Poisson arrivals at `rps`, regardless of how the server keeps up.
    Open { rps: f64 },
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A request arrives; `Some(client)` for closed-loop load.
    Arrival(Option<usize>),
    BatchDone,
    /// A queue-delay deadline; stale ones are harmless, the batcher re-checks.
    Wake,
}

struct Request {
    arrived_ns: u64,
    client: Option<usize>,
}

/// One Triton-style dynamic batcher in front of one model instance.
struct Server {
    now: u64,
    seq: u64,
    rng: StdRng,
    load: Load,
    setting: Setting,
    queue: VecDeque<Request>,
    in_service: Vec<Request>,
    busy: bool,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    latencies_ms: Vec<f64>,
}

impl Server {
    fn new(load: Load, setting: Setting, seed: u64) -> Self {
        let mut s = Self {
            now: 0,
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            load,
            setting,
            queue: VecDeque::new(),
            in_service: Vec::new(),
            busy: false,
            events: BinaryHeap::new(),
            latencies_ms: Vec::new(),
        };
        match load {
            Load::Closed { clients, .. } => {
                for c in 0..clients {
                    let t = s.gap();
                    s.schedule(t, Event::Arrival(Some(c)));
                }
            }
            Load::Open { .. } => {
                let t = s.gap();
                s.schedule(t, Event::Arrival(None));
            }
        }
        s
    }

    /// Think time (closed loop) or inter-arrival time (open loop).
    fn gap(&mut self) -> u64 {
        let mean_ms = match self.load {
            Load::Closed { think_ms, .. } => think_ms,
            Load::Open { rps } => 1000.0 / rps,
        };
        let ms = Exp::new(1.0 / mean_ms)
            .expect("rate > 0")
            .sample(&mut self.rng);
        self.now + (ms * 1e6) as u64
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// When the instance is free: dispatch if `preferred_batch_size` rows (or a full batch)
    /// are queued or the oldest request has waited `max_queue_delay`; else wake at that
    /// deadline. A batch takes up to `MAX_BATCH` queued requests.
    fn try_dispatch(&mut self) {
        let Some(oldest) = self.queue.front() else {
            return;
        };
        if self.busy {
            return;
        }
        let deadline = oldest.arrived_ns + self.setting.max_queue_delay_us * 1000;
        let queued = self.queue.len();
        let ready = queued as u64 >= self.setting.preferred_batch_size
            || queued >= MAX_BATCH
            || self.now >= deadline;
        if !ready {
            self.schedule(deadline, Event::Wake);
            return;
        }
        let rows = queued.min(MAX_BATCH);
        self.in_service.extend(self.queue.drain(..rows));
        self.busy = true;
        let done = self.now + SERVICE_FIXED_NS + SERVICE_PER_ROW_NS * rows as u64;
        self.schedule(done, Event::BatchDone);
    }

    /// Runs one interval and reports what a metrics pipeline would.
    fn run_interval(&mut self) -> Observation {
        let end = self.now + INTERVAL_NS;
        self.latencies_ms.clear();
        while let Some(&Reverse((at, _, event))) = self.events.peek() {
            if at > end {
                break;
            }
            self.events.pop();
            self.now = at;
            match event {
                Event::Arrival(client) => {
                    self.queue.push_back(Request {
                        arrived_ns: at,
                        client,
                    });
                    if client.is_none() {
                        let next = self.gap();
                        self.schedule(next, Event::Arrival(None));
                    }
                }
                Event::BatchDone => {
                    self.busy = false;
                    for req in std::mem::take(&mut self.in_service) {
                        self.latencies_ms.push((at - req.arrived_ns) as f64 / 1e6);
                        if let Some(c) = req.client {
                            let next = self.gap();
                            self.schedule(next, Event::Arrival(Some(c)));
                        }
                    }
                }
                Event::Wake => {}
            }
            self.try_dispatch();
        }
        self.now = end;
        let requests = self.latencies_ms.len() as u64;
        Observation {
            p99_ms: p99(&mut self.latencies_ms),
            throughput: requests as f64 * 1e9 / INTERVAL_NS as f64,
            requests,
        }
    }

    fn apply(&mut self, setting: Setting) {
        self.setting = setting;
        // A shorter deadline may already have passed.
        self.try_dispatch();
    }
}

/// Nearest-rank 99th percentile.
fn p99(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (samples.len() as f64 * 0.99).ceil() as usize;
    samples[rank.max(1) - 1]
}

const SWEEP_DELAYS_US: [u64; 8] = [0, 250, 500, 1000, 2000, 5000, 10000, 20000];
const SWEEP_PREFERRED: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// Best throughput among fixed settings whose p99 (pooled over five measured intervals, after
/// a warm-up one) met the SLO, and how many fixed settings broke it: the test is only
/// meaningful if some did.
fn best_fixed(load: Load, slo_ms: f64, seed: u64) -> (f64, usize) {
    let mut best: f64 = 0.0;
    let mut violating = 0;
    for delay in SWEEP_DELAYS_US {
        for preferred in SWEEP_PREFERRED {
            // Without a delay nobody waits, and preferred size 1 never waits: both are the
            // greedy batcher, simulated once.
            if (delay == 0 || preferred == 1) && (delay, preferred) != (0, 1) {
                continue;
            }
            let setting = Setting {
                max_queue_delay_us: delay,
                preferred_batch_size: preferred,
            };
            let mut server = Server::new(load, setting, seed);
            server.run_interval();
            let mut latencies = Vec::new();
            for _ in 0..5 {
                server.run_interval();
                latencies.extend_from_slice(&server.latencies_ms);
            }
            let throughput = latencies.len() as f64 / 5.0;
            if p99(&mut latencies) <= slo_ms {
                best = best.max(throughput);
            } else {
                violating += 1;
            }
        }
    }
    (best, violating)
}

struct TunerRun {
    observations: Vec<Observation>,
    /// Latencies of the second half of the run, pooled.
    late_latencies_ms: Vec<f64>,
    trace: String,
}

fn run_tuner(load: Load, slo_ms: f64, initial: Setting, intervals: usize, seed: u64) -> TunerRun {
    let cfg = TunerConfig {
        slo_ms,
        max_batch_size: MAX_BATCH as u64,
        min_delay_us: 0,
        max_delay_us: 20_000,
        min_requests: 100,
    };
    let mut tuner = BatchTuner::new(cfg, initial);
    let mut server = Server::new(load, tuner.setting(), seed);
    let mut run = TunerRun {
        observations: Vec::new(),
        late_latencies_ms: Vec::new(),
        trace: String::new(),
    };
    for i in 0..intervals {
        let obs = server.run_interval();
        if i >= intervals / 2 {
            run.late_latencies_ms
                .extend_from_slice(&server.latencies_ms);
        }
        run.trace += &format!(
            "{i:>3} {:>5} µs/{:>2}: p99 {:>6.2} ms, {:>5.0}/s",
            server.setting.max_queue_delay_us,
            server.setting.preferred_batch_size,
            obs.p99_ms,
            obs.throughput
        );
        if let Some((setting, reason)) = tuner.observe(&obs) {
            assert!(setting.max_queue_delay_us <= 20_000, "delay bound");
            assert!(
                (1..=MAX_BATCH as u64).contains(&setting.preferred_batch_size),
                "batch bound"
            );
            run.trace += &format!("  -> {reason}");
            server.apply(setting);
        }
        run.trace += "\n";
        run.observations.push(obs);
    }
    run
}

const INTERVALS: usize = 60;

/// After convergence (the last 30 of 60 one-second intervals) every interval's p99 meets
/// the SLO, so does the p99 of all their requests pooled, and mean throughput is within
/// `margin` of the best fixed setting that meets the SLO. Over 60 seeds (`seed_sweep_tuner`)
/// no late interval broke the SLO in any scenario (worst: 0.93 × SLO) and late throughput
/// was at least 0.945 × best fixed (the climb-down case; the others ≥ 0.97).
fn assert_tuner_converges(load: Load, slo_ms: f64, initial: Setting, margin: f64) {
    let seed = 42;
    let (best, violating) = best_fixed(load, slo_ms, seed);
    assert!(
        violating > 0,
        "{load:?}: SLO {slo_ms} ms must rule out some fixed settings to be a real test"
    );
    let mut run = run_tuner(load, slo_ms, initial, INTERVALS, seed);
    println!(
        "{load:?}, SLO {slo_ms} ms, best fixed {best:.0}/s ({violating} fixed settings break the SLO)\n{}",
        run.trace
    );
    let late = &run.observations[INTERVALS / 2..];
    for (i, obs) in late.iter().enumerate() {
        assert!(
            obs.p99_ms <= slo_ms,
            "interval {}: p99 {:.2} ms > SLO {slo_ms} ms after convergence",
            i + INTERVALS / 2,
            obs.p99_ms
        );
    }
    let pooled = p99(&mut run.late_latencies_ms);
    assert!(
        pooled <= slo_ms,
        "pooled late p99 {pooled:.2} ms > SLO {slo_ms} ms"
    );
    let throughput = late.iter().map(|o| o.throughput).sum::<f64>() / late.len() as f64;
    assert!(
        throughput >= best * (1.0 - margin),
        "late throughput {throughput:.0}/s < best fixed {best:.0}/s × (1 − {margin})"
    );
}

const GREEDY: Setting = Setting {
    max_queue_delay_us: 0,
    preferred_batch_size: 1,
};

#[test]
fn tuner_closed_loop_8_clients_meets_10ms_slo_within_10_percent_of_best_fixed() {
    // Clients think 0.5 ms, shorter than a batch takes: greedy batching splits them into
    // groups that alternate, and only waiting for all 8 (preferred 8, a long delay) merges
    // them: +12% throughput. Preferred 16 waits out the whole delay and breaks the SLO.
    let load = Load::Closed {
        clients: 8,
        think_ms: 0.5,
    };
    assert_tuner_converges(load, 10.0, GREEDY, 0.1);
}

#[test]
fn tuner_closed_loop_32_clients_meets_12ms_slo_within_10_percent_of_best_fixed() {
    let load = Load::Closed {
        clients: 32,
        think_ms: 10.0,
    };
    assert_tuner_converges(load, 12.0, GREEDY, 0.1);
}

#[test]
fn tuner_closed_loop_8_clients_climbs_down_from_slow_setting_within_10_percent_of_best_fixed() {
    // Starts inside the SLO but at 60% of the best throughput: only downward probes help.
    let load = Load::Closed {
        clients: 8,
        think_ms: 5.0,
    };
    let initial = Setting {
        max_queue_delay_us: 10_000,
        preferred_batch_size: 8,
    };
    assert_tuner_converges(load, 15.0, initial, 0.1);
}

#[test]
fn tuner_open_loop_poisson_1000_rps_meets_10ms_slo_within_10_percent_of_best_fixed() {
    assert_tuner_converges(Load::Open { rps: 1000.0 }, 10.0, GREEDY, 0.1);
}

/// Starting at the largest delay and batch, p99 is 2–3× the SLO; the tuner must be under
/// the SLO within `within` intervals. Exploration may still touch the SLO later, but each
/// such probe must be reverted at once: never two breaching intervals in a row. Over 60
/// seeds recovery took at most 2 intervals: the first back-off's interval still carries the
/// backlog the bad setting queued, which can trigger a second, smaller back-off.
fn assert_backs_off(load: Load, slo_ms: f64, within: usize) {
    let run = run_tuner(load, slo_ms, BATCH_HARDEST, 30, 7);
    println!("{load:?}, SLO {slo_ms} ms\n{}", run.trace);
    let (recovered, longest) = breach_profile(&run.observations, slo_ms);
    assert!(recovered > 0, "starts in breach");
    assert!(
        recovered <= within,
        "took {recovered} intervals to get under the SLO, allowed {within}"
    );
    assert!(
        longest <= 1,
        "{longest} breaching intervals in a row after recovery"
    );
}

const BATCH_HARDEST: Setting = Setting {
    max_queue_delay_us: 20_000,
    preferred_batch_size: 32,
};

/// Intervals until the first one within the SLO, and the longest run of breaching
/// intervals after it.
fn breach_profile(observations: &[Observation], slo_ms: f64) -> (usize, usize) {
    let recovered = observations
        .iter()
        .position(|o| o.p99_ms <= slo_ms)
        .expect("recovers");
    let mut longest = 0;
    let mut current = 0;
    for o in &observations[recovered..] {
        current = if o.p99_ms > slo_ms { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    (recovered, longest)
}

#[test]
fn tuner_backs_off_closed_loop_breach_within_3_intervals() {
    let load = Load::Closed {
        clients: 32,
        think_ms: 10.0,
    };
    assert_backs_off(load, 12.0, 3);
}

#[test]
fn tuner_backs_off_open_loop_breach_within_3_intervals() {
    assert_backs_off(Load::Open { rps: 1000.0 }, 10.0, 3);
}

// ---------------------------------------------------------------------------------------
// Seed sweeps behind the stated bounds: `cargo test --release --test simulation --
// --ignored --nocapture` (about a minute).
// ---------------------------------------------------------------------------------------

fn quantiles(mut xs: Vec<f64>) -> String {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:.3} p1 {:.3} p50 {:.3} p99 {:.3} max {:.3}",
        at(0.0),
        at(0.01),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

#[test]
#[ignore = "slow: derives the bandit bounds from 400 seeds"]
fn seed_sweep_bandit() {
    for rewards in [
        Rewards::Bernoulli([0.05, 0.10]),
        Rewards::Bernoulli([0.5, 0.6]),
        Rewards::Gaussian {
            means: [1.0, 1.2],
            sd: 1.0,
        },
    ] {
        let means = rewards.means();
        let split_regret = HORIZON as f64 * (means[1] - means[0]) / 2.0;
        let (mut settled, mut regret) = (Vec::new(), Vec::new());
        for seed in 0..400 {
            let run = run_bandit(rewards, HORIZON, seed, Guardrails::default());
            let last_dip = run.best_weight.iter().rposition(|&w| w < 0.9);
            settled.push(last_dip.map_or(0.0, |i| ((i + 1) * UPDATE_EVERY) as f64));
            regret.push(run.regret / split_regret);
        }
        println!(
            "{means:?}: better arm last below 90% at event {}",
            quantiles(settled)
        );
        println!("{means:?}: regret / 50-50 regret {}", quantiles(regret));
    }
}

#[test]
#[ignore = "slow: derives the tuner bounds from 60 seeds"]
fn seed_sweep_tuner() {
    let cases = [
        (
            Load::Closed {
                clients: 8,
                think_ms: 0.5,
            },
            10.0,
            GREEDY,
        ),
        (
            Load::Closed {
                clients: 32,
                think_ms: 10.0,
            },
            12.0,
            GREEDY,
        ),
        (
            Load::Closed {
                clients: 8,
                think_ms: 5.0,
            },
            15.0,
            Setting {
                max_queue_delay_us: 10_000,
                preferred_batch_size: 8,
            },
        ),
        (Load::Open { rps: 1000.0 }, 10.0, GREEDY),
    ];
    for (load, slo_ms, initial) in cases {
        let (mut ratio, mut worst_p99, mut breaching) = (Vec::new(), Vec::new(), 0);
        for seed in 0..60 {
            let (best, _) = best_fixed(load, slo_ms, seed);
            let run = run_tuner(load, slo_ms, initial, INTERVALS, seed);
            let late = &run.observations[INTERVALS / 2..];
            let throughput = late.iter().map(|o| o.throughput).sum::<f64>() / late.len() as f64;
            ratio.push(throughput / best);
            worst_p99.push(late.iter().map(|o| o.p99_ms / slo_ms).fold(0.0, f64::max));
            breaching += late.iter().filter(|o| o.p99_ms > slo_ms).count();
        }
        println!(
            "{load:?} SLO {slo_ms}: late throughput / best fixed {}",
            quantiles(ratio)
        );
        println!(
            "  worst late p99 / SLO {}; breaching late intervals {breaching}",
            quantiles(worst_p99)
        );
    }
    for (load, slo_ms) in [
        (
            Load::Closed {
                clients: 32,
                think_ms: 10.0,
            },
            12.0,
        ),
        (Load::Open { rps: 1000.0 }, 10.0),
    ] {
        let (mut recovered, mut longest) = (Vec::new(), Vec::new());
        for seed in 0..60 {
            let run = run_tuner(load, slo_ms, BATCH_HARDEST, 30, seed);
            let (r, l) = breach_profile(&run.observations, slo_ms);
            recovered.push(r as f64);
            longest.push(l as f64);
        }
        println!(
            "{load:?} SLO {slo_ms} from {BATCH_HARDEST:?}: intervals to recover {}",
            quantiles(recovered)
        );
        println!("  longest breach run after recovery {}", quantiles(longest));
    }
}
