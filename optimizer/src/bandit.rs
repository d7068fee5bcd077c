//! Thompson-sampling traffic split between the versions of one model.
//!
//! Classic Thompson sampling draws from the posterior on every request. Here the router
//! only sees a weight table, so the posterior never has to be on the request path: the
//! weight of each arm is the posterior probability that it is the best arm, which is
//! exactly the probability with which per-request Thompson sampling would have chosen it.
//! Expressing the policy as weights also lets [`Guardrails`] bound how fast traffic moves.
//!
//! The reward model is chosen from the data rather than configured, so a caller that
//! reports success/failure gets the Beta-Bernoulli model and one that reports a score gets
//! the Gaussian one without having to say so. See [`RewardModel`] for both posteriors.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_distr::{Beta, Distribution, StudentT};
use serde::{Deserialize, Serialize};

use crate::ArmState;

/// Joint posterior draws per Monte Carlo estimate: the standard error of a probability is
/// at most 0.5 / sqrt(2000) ≈ 1.1 percentage points, finer than any guardrail step.
const DRAWS: usize = 2000;

/// A weight change this small moves one request in a thousand: not worth pushing a new
/// routing table to every router for.
const CHANGE_EPSILON: f64 = 1e-3;

/// Limits on how traffic may move, set by operators rather than learned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guardrails {
    /// Every served arm keeps at least this share, so a version that looked bad early can
    /// still collect the evidence to recover. Capped at an equal split when there are too
    /// many arms to honour it.
    pub min_share: f64,
    /// No arm's weight moves by more than this in one update, so a burst of noisy rewards
    /// cannot swing all traffic onto an unproven version at once.
    pub max_shift: f64,
    /// Pins the current split, e.g. during an incident.
    pub frozen: bool,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            min_share: 0.05,
            max_shift: 0.2,
            frozen: false,
        }
    }
}

/// Which posterior the bandit uses; decided by [`Bandit::reward_model`] from the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RewardModel {
    /// Every reward seen so far is exactly 0 or 1: each arm's success rate has a Beta(1, 1)
    /// prior and a Beta(1 + successes, 1 + failures) posterior.
    Bernoulli,
    /// Some reward is not 0 or 1. Each arm's mean has a Normal-Inverse-Gamma prior worth one
    /// pseudo-observation, centred on the pooled mean of the arms being compared with the
    /// pooled variance as its scale (1 when fewer than two rewards exist). The prior is weak
    /// so the data dominate after a handful of rewards, and pooled so it is on the rewards'
    /// own scale whatever their units. The posterior on the mean is then a Student-t with
    /// 1 + n degrees of freedom, whose heavy tails keep barely observed arms in play.
    Gaussian,
}

/// Traffic split between the versions of one model, learned from their rewards.
#[derive(Debug, Clone, Default)]
pub struct Bandit {
    stats: BTreeMap<String, ArmState>,
    weights: BTreeMap<String, f64>,
}

impl Bandit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the versions serving now. Any change of the set resets the split to equal
    /// shares: a new version must start from a fair share to gather evidence, and carrying
    /// over a split computed for different arms would favour whichever arm stayed. Statistics
    /// of arms that leave are kept, since a version that comes back is the same model.
    pub fn set_arms(&mut self, arms: &[String]) {
        let serving: BTreeSet<&String> = arms.iter().collect();
        if serving.iter().copied().eq(self.weights.keys()) {
            return;
        }
        let share = 1.0 / serving.len() as f64;
        self.weights = serving.iter().map(|&a| (a.clone(), share)).collect();
        for arm in serving {
            self.stats.entry(arm.clone()).or_default();
        }
    }

    /// Records one reward. Non-finite rewards are dropped: a single NaN would poison the
    /// running sums of the arm for good.
    pub fn observe(&mut self, arm: &str, reward: f64) {
        if !reward.is_finite() {
            return;
        }
        // Called per reward: look up before allocating a key.
        if !self.stats.contains_key(arm) {
            self.stats.insert(arm.to_owned(), ArmState::default());
        }
        let s = self.stats.get_mut(arm).expect("just ensured");
        s.count += 1;
        s.sum += reward;
        s.sum_sq += reward * reward;
    }

    pub fn arms(&self) -> &BTreeMap<String, ArmState> {
        &self.stats
    }

    /// Replaces the statistics, e.g. from a snapshot after a restart. The reward model needs
    /// no separate flag: it is re-derived from these sums.
    pub fn restore(&mut self, stats: BTreeMap<String, ArmState>) {
        self.stats = stats;
        for arm in self.weights.keys() {
            self.stats.entry(arm.clone()).or_default();
        }
    }

    pub fn weights(&self) -> &BTreeMap<String, f64> {
        &self.weights
    }

    /// Binary rewards leave `sum == sum_sq` with an integral `sum` (x² = x for x ∈ {0, 1}),
    /// so the choice survives [`Bandit::restore`] without extra state. Any other reward
    /// breaks the equality except by an exact floating-point coincidence. One arm's
    /// continuous rewards switch every arm, because arms are only comparable under one model.
    pub fn reward_model(&self) -> RewardModel {
        let binary = self.stats.values().all(|s| {
            s.sum == s.sum_sq && s.sum.fract() == 0.0 && s.sum >= 0.0 && s.sum <= s.count as f64
        });
        if binary {
            RewardModel::Bernoulli
        } else {
            RewardModel::Gaussian
        }
    }

    /// Recomputes the split as each served arm's posterior probability of being best,
    /// projected onto the guardrails. Returns the new split only when some weight moved by
    /// more than 0.001, so callers push routing changes only when there is news.
    pub fn update_weights(
        &mut self,
        rng: &mut impl Rng,
        guard: &Guardrails,
    ) -> Option<BTreeMap<String, f64>> {
        if guard.frozen || self.weights.len() < 2 {
            return None;
        }
        let arms: Vec<ArmState> = self
            .weights
            .keys()
            .map(|a| self.stats.get(a).cloned().unwrap_or_default())
            .collect();
        let target = prob_best(&posteriors(self.reward_model(), &arms), rng);
        let current: Vec<f64> = self.weights.values().copied().collect();
        let next = project(&target, &current, guard);
        let moved = next
            .iter()
            .zip(&current)
            .any(|(n, c)| (n - c).abs() > CHANGE_EPSILON);
        if !moved {
            return None;
        }
        for (w, n) in self.weights.values_mut().zip(next) {
            *w = n;
        }
        Some(self.weights.clone())
    }

    /// Posterior probability that `challenger`'s mean reward exceeds `champion`'s, for
    /// promotion decisions. The two posteriors are always sampled in name order, so with the
    /// same RNG state `prob_better(a, b) + prob_better(b, a)` is exactly 1.
    pub fn prob_better(&self, challenger: &str, champion: &str, rng: &mut impl Rng) -> f64 {
        if challenger == champion {
            return 0.5;
        }
        let state = |arm: &str| self.stats.get(arm).cloned().unwrap_or_default();
        let (first, second) = if challenger < champion {
            (challenger, champion)
        } else {
            (champion, challenger)
        };
        let p = prob_best(
            &posteriors(self.reward_model(), &[state(first), state(second)]),
            rng,
        );
        if challenger == first { p[0] } else { p[1] }
    }
}

/// Routes one request: the arm whose cumulative-weight interval contains `u`, a uniform
/// draw in [0, 1). Runs on the request path, so it only walks the map. Weights that do not
/// sum exactly to 1 (float rounding) send the remainder to the last positive-weight arm;
/// `None` only when no arm has positive weight.
pub fn pick(weights: &BTreeMap<String, f64>, u: f64) -> Option<&str> {
    let mut cumulative = 0.0;
    let mut last = None;
    for (arm, &w) in weights {
        if w > 0.0 {
            cumulative += w;
            last = Some(arm.as_str());
            if u < cumulative {
                break;
            }
        }
    }
    last
}

enum Posterior {
    Beta(Beta<f64>),
    Student {
        loc: f64,
        scale: f64,
        t: StudentT<f64>,
    },
}

impl Posterior {
    fn sample(&self, rng: &mut impl Rng) -> f64 {
        match self {
            Posterior::Beta(b) => b.sample(rng),
            Posterior::Student { loc, scale, t } => loc + scale * t.sample(rng),
        }
    }
}

/// Posteriors of the arms' mean rewards under `model`; see [`RewardModel`] for the priors.
fn posteriors(model: RewardModel, arms: &[ArmState]) -> Vec<Posterior> {
    match model {
        RewardModel::Bernoulli => arms
            .iter()
            .map(|s| {
                let successes = s.sum;
                let failures = s.count as f64 - s.sum;
                // Both parameters are ≥ 1 because `reward_model` vouched 0 ≤ sum ≤ count.
                Posterior::Beta(Beta::new(1.0 + successes, 1.0 + failures).expect("beta ≥ 1"))
            })
            .collect(),
        RewardModel::Gaussian => {
            let n: f64 = arms.iter().map(|s| s.count as f64).sum();
            let sum: f64 = arms.iter().map(|s| s.sum).sum();
            let sum_sq: f64 = arms.iter().map(|s| s.sum_sq).sum();
            let prior_mean = if n > 0.0 { sum / n } else { 0.0 };
            let prior_var = if n >= 2.0 {
                ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0)
            } else {
                1.0
            };
            arms.iter()
                .map(|s| {
                    let n = s.count as f64;
                    let kappa = 1.0 + n;
                    let nu = 1.0 + n;
                    let loc = (prior_mean + s.sum) / kappa;
                    let mut scatter = prior_var;
                    if n > 0.0 {
                        let mean = s.sum / n;
                        scatter += (s.sum_sq - s.sum * mean).max(0.0)
                            + n * (mean - prior_mean).powi(2) / kappa;
                    }
                    Posterior::Student {
                        loc,
                        scale: (scatter / nu / kappa).sqrt(),
                        t: StudentT::new(nu).expect("nu ≥ 1"),
                    }
                })
                .collect()
        }
    }
}

/// Monte Carlo estimate of the probability that each arm has the highest mean. Exact ties
/// (possible when all rewards are identical) are shared, so identical arms split evenly.
fn prob_best(posteriors: &[Posterior], rng: &mut impl Rng) -> Vec<f64> {
    let mut wins = vec![0.0; posteriors.len()];
    let mut draw = vec![0.0; posteriors.len()];
    for _ in 0..DRAWS {
        for (d, p) in draw.iter_mut().zip(posteriors) {
            *d = p.sample(rng);
        }
        let best = draw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tied = draw.iter().filter(|&&d| d == best).count() as f64;
        for (w, &d) in wins.iter_mut().zip(&draw) {
            if d == best {
                *w += 1.0 / tied;
            }
        }
    }
    wins.iter().map(|w| w / DRAWS as f64).collect()
}

/// The split closest (Euclidean) to `target` that every guardrail allows: each weight at
/// least `min_share`, within `max_shift` of `current`, summing to 1.
///
/// `min_share` outranks `max_shift`: if `current` is below the floor (the floor was just
/// raised) it is first lifted onto it, even if that is a larger step, because the floor
/// is the safety property. The floor is capped at an equal split, which is always feasible.
fn project(target: &[f64], current: &[f64], guard: &Guardrails) -> Vec<f64> {
    let k = target.len();
    let floor = if guard.min_share.is_finite() {
        guard.min_share.clamp(0.0, 1.0 / k as f64)
    } else {
        0.0
    };
    // A malformed shift freezes rather than unleashes.
    let shift = if guard.max_shift.is_finite() {
        guard.max_shift.max(0.0)
    } else {
        0.0
    };
    let base = project_box(current, &vec![floor; k], &vec![1.0; k]);
    let lo: Vec<f64> = base.iter().map(|b| (b - shift).max(floor)).collect();
    let hi: Vec<f64> = base
        .iter()
        .zip(&lo)
        .map(|(b, l)| (b + shift).min(1.0).max(*l))
        .collect();
    project_box(target, &lo, &hi)
}

/// Euclidean projection of `y` onto {x : lo ≤ x ≤ hi, Σx = 1}, which is x = clamp(y − τ)
/// for the τ that makes the sum 1. The sum is monotone in τ, so bisection finds τ without
/// any sorting; the float residual is then handed to arms with slack so that the sum is 1
/// and every bound holds exactly. Requires Σlo ≤ 1 ≤ Σhi, which `project` guarantees.
fn project_box(y: &[f64], lo: &[f64], hi: &[f64]) -> Vec<f64> {
    let clamp = |tau: f64| -> Vec<f64> {
        y.iter()
            .zip(lo.iter().zip(hi))
            .map(|(v, (l, h))| (v - tau).max(*l).min(*h))
            .collect()
    };
    let (mut below, mut above) = (f64::INFINITY, f64::NEG_INFINITY);
    for ((v, l), h) in y.iter().zip(lo).zip(hi) {
        below = below.min(v - h);
        above = above.max(v - l);
    }
    // Invariant: sum(clamp(below)) ≥ 1 ≥ sum(clamp(above)).
    for _ in 0..200 {
        let mid = 0.5 * (below + above);
        if mid <= below || mid >= above {
            break;
        }
        if clamp(mid).iter().sum::<f64>() > 1.0 {
            below = mid;
        } else {
            above = mid;
        }
    }
    let mut x = clamp(above);
    let mut residual = 1.0 - x.iter().sum::<f64>();
    for ((xi, l), h) in x.iter_mut().zip(lo).zip(hi) {
        let step = if residual > 0.0 {
            residual.min(h - *xi)
        } else {
            residual.max(l - *xi)
        };
        *xi += step;
        residual -= step;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const TOL: f64 = 1e-12;

    fn names(arms: &[&str]) -> Vec<String> {
        arms.iter().map(|a| a.to_string()).collect()
    }

    /// A random point of the simplex, `floor` lifted as the bandit's own weights would be.
    fn random_split(rng: &mut StdRng, k: usize, floor: f64) -> Vec<f64> {
        let raw: Vec<f64> = (0..k).map(|_| rng.random::<f64>().powi(3)).collect();
        let total: f64 = raw.iter().sum();
        let split: Vec<f64> = raw.iter().map(|r| r / total).collect();
        project_box(&split, &vec![floor; k], &vec![1.0; k])
    }

    #[test]
    fn projection_satisfies_every_guardrail_and_is_the_nearest_such_split() {
        let mut rng = StdRng::seed_from_u64(1);
        for case in 0..5_000 {
            let k = rng.random_range(2..=6);
            let floor = rng.random_range(0.0..=1.0 / k as f64);
            let guard = Guardrails {
                min_share: floor,
                max_shift: if case % 7 == 0 {
                    0.0
                } else {
                    rng.random_range(0.0..=1.0)
                },
                frozen: false,
            };
            let current = random_split(&mut rng, k, floor);
            let target = random_split(&mut rng, k, 0.0);
            let next = project(&target, &current, &guard);

            let total: f64 = next.iter().sum();
            assert!((total - 1.0).abs() < TOL, "case {case}: sum {total}");
            for (n, c) in next.iter().zip(&current) {
                assert!(*n >= floor - TOL, "case {case}: {n} under floor {floor}");
                let shift = (n - c).abs();
                assert!(shift <= guard.max_shift + TOL, "case {case}: moved {shift}");
            }

            // Optimality (KKT): next = clamp(target − τ) for one τ, so every arm strictly
            // inside its box has target − next = τ, an arm held at its lower bound has
            // ≤ τ (unclamped it would sit lower) and one held at its upper bound ≥ τ.
            let lo: Vec<f64> = current
                .iter()
                .map(|c| (c - guard.max_shift).max(floor))
                .collect();
            let hi: Vec<f64> = current
                .iter()
                .map(|c| (c + guard.max_shift).min(1.0))
                .collect();
            let gap = |i: usize| target[i] - next[i];
            let at_lo = |i: usize| next[i] <= lo[i] + 1e-9;
            let at_hi = |i: usize| next[i] >= hi[i] - 1e-9;
            let free: Vec<usize> = (0..k).filter(|&i| !at_lo(i) && !at_hi(i)).collect();
            if let Some(&first) = free.first() {
                let tau = gap(first);
                for i in 0..k {
                    let ok = match (at_lo(i), at_hi(i)) {
                        (false, false) => (gap(i) - tau).abs() < 1e-9,
                        (true, false) => gap(i) <= tau + 1e-9,
                        (false, true) => gap(i) >= tau - 1e-9,
                        (true, true) => true,
                    };
                    assert!(
                        ok,
                        "case {case}: arm {i} is not where the projection puts it"
                    );
                }
            }
        }
    }

    #[test]
    fn projection_leaves_a_feasible_target_alone() {
        let guard = Guardrails::default();
        let next = project(&[0.4, 0.6], &[0.5, 0.5], &guard);
        assert!((next[0] - 0.4).abs() < TOL && (next[1] - 0.6).abs() < TOL);
    }

    #[test]
    fn projection_moves_exactly_max_shift_towards_a_far_target() {
        let next = project(&[0.0, 1.0], &[0.5, 0.5], &Guardrails::default());
        assert!((next[0] - 0.3).abs() < TOL && (next[1] - 0.7).abs() < TOL);
        // The last steps are capped by the floor, not the shift.
        let next = project(&[0.0, 1.0], &[0.1, 0.9], &Guardrails::default());
        assert!((next[0] - 0.05).abs() < TOL && (next[1] - 0.95).abs() < TOL);
    }

    #[test]
    fn projection_caps_an_unmeetable_floor_at_an_equal_split() {
        let guard = Guardrails {
            min_share: 0.5,
            max_shift: 1.0,
            frozen: false,
        };
        let next = project(&[1.0, 0.0, 0.0], &[0.6, 0.2, 0.2], &guard);
        for n in next {
            assert!((n - 1.0 / 3.0).abs() < TOL);
        }
    }

    #[test]
    fn projection_lifts_weights_under_a_raised_floor_even_past_max_shift() {
        let guard = Guardrails {
            min_share: 0.3,
            max_shift: 0.05,
            frozen: false,
        };
        let next = project(&[0.0, 1.0], &[0.1, 0.9], &guard);
        assert!((next[0] - 0.3).abs() < TOL, "floor wins: {next:?}");
    }

    #[test]
    fn reward_model_is_bernoulli_until_a_non_binary_reward_arrives() {
        let mut b = Bandit::new();
        assert_eq!(b.reward_model(), RewardModel::Bernoulli, "no data");
        for r in [0.0, 1.0, 1.0, 0.0] {
            b.observe("1", r);
        }
        b.observe("2", 1.0);
        assert_eq!(b.reward_model(), RewardModel::Bernoulli);
        b.observe("2", 0.5);
        assert_eq!(
            b.reward_model(),
            RewardModel::Gaussian,
            "one arm switches all"
        );

        let mut restored = Bandit::new();
        restored.restore(b.arms().clone());
        assert_eq!(
            restored.reward_model(),
            RewardModel::Gaussian,
            "survives restore"
        );
    }

    #[test]
    fn reward_model_catches_rewards_whose_sums_look_almost_binary() {
        for rewards in [[2.0, -1.0], [2.0, 0.0], [-1.0, 1.0]] {
            let mut b = Bandit::new();
            for r in rewards {
                b.observe("1", r);
            }
            assert_eq!(b.reward_model(), RewardModel::Gaussian, "{rewards:?}");
        }
    }

    #[test]
    fn non_finite_rewards_are_dropped() {
        let mut b = Bandit::new();
        b.observe("1", f64::NAN);
        b.observe("1", f64::INFINITY);
        b.observe("1", 1.0);
        assert_eq!(
            b.arms()["1"],
            ArmState {
                count: 1,
                sum: 1.0,
                sum_sq: 1.0
            }
        );
    }

    fn with_stats(arms: &[(&str, u64, f64, f64)]) -> Bandit {
        let mut b = Bandit::new();
        b.restore(
            arms.iter()
                .map(|&(name, count, sum, sum_sq)| {
                    (name.to_string(), ArmState { count, sum, sum_sq })
                })
                .collect(),
        );
        b
    }

    #[test]
    fn prob_better_is_exactly_complementary_under_the_same_draws() {
        let bernoulli = with_stats(&[("a", 100, 30.0, 30.0), ("b", 80, 28.0, 28.0)]);
        let gaussian = with_stats(&[("a", 50, 60.0, 110.0), ("b", 40, 50.0, 90.0)]);
        for b in [bernoulli, gaussian] {
            let ab = b.prob_better("a", "b", &mut StdRng::seed_from_u64(3));
            let ba = b.prob_better("b", "a", &mut StdRng::seed_from_u64(3));
            assert!((ab + ba - 1.0).abs() < TOL, "{ab} + {ba}");
        }
    }

    #[test]
    fn prob_better_is_near_certain_for_clear_winners_and_even_for_equals() {
        let mut rng = StdRng::seed_from_u64(4);
        let b = with_stats(&[("a", 1000, 900.0, 900.0), ("b", 1000, 100.0, 100.0)]);
        assert!(b.prob_better("a", "b", &mut rng) > 0.999);
        assert!(b.prob_better("b", "a", &mut rng) < 0.001);

        let b = with_stats(&[("a", 500, 250.0, 250.0), ("b", 500, 250.0, 250.0)]);
        let p = b.prob_better("a", "b", &mut rng);
        assert!((p - 0.5).abs() < 0.05, "equal arms: {p}");

        // Gaussian: means 2.0 vs 1.0, sd 1, 400 rewards each.
        let b = with_stats(&[("a", 400, 800.0, 2000.0), ("b", 400, 400.0, 800.0)]);
        assert!(b.prob_better("a", "b", &mut rng) > 0.999);

        assert_eq!(b.prob_better("a", "a", &mut rng), 0.5);
        let unseen = Bandit::new().prob_better("x", "y", &mut rng);
        assert!((unseen - 0.5).abs() < 0.05, "two priors: {unseen}");
    }

    #[test]
    fn identical_constant_rewards_split_evenly() {
        // Zero variance makes every draw a tie; ties must be shared, not won by the first.
        let b = with_stats(&[("a", 10, 5.0, 2.5), ("b", 10, 5.0, 2.5)]);
        let p = b.prob_better("a", "b", &mut StdRng::seed_from_u64(5));
        assert!((p - 0.5).abs() < 0.05, "{p}");
    }

    #[test]
    fn pick_routes_by_cumulative_weight() {
        let w: BTreeMap<String, f64> = [("a".to_string(), 0.25), ("b".to_string(), 0.75)].into();
        assert_eq!(pick(&w, 0.0), Some("a"));
        assert_eq!(pick(&w, 0.2499), Some("a"));
        assert_eq!(pick(&w, 0.25), Some("b"));
        assert_eq!(pick(&w, 0.999_999), Some("b"));
        assert_eq!(
            pick(&w, 1.0),
            Some("b"),
            "rounding slack goes to the last arm"
        );

        let w: BTreeMap<String, f64> = [("a".to_string(), 0.0), ("b".to_string(), 1.0)].into();
        assert_eq!(pick(&w, 0.0), Some("b"), "zero weight never routes");
        let w: BTreeMap<String, f64> = [("a".to_string(), 1.0), ("b".to_string(), 0.0)].into();
        assert_eq!(pick(&w, 1.0), Some("a"), "slack skips zero-weight arms");
        assert_eq!(pick(&BTreeMap::new(), 0.5), None);

        let w: BTreeMap<String, f64> = [
            ("a".to_string(), 0.1),
            ("b".to_string(), 0.3),
            ("c".to_string(), 0.6),
        ]
        .into();
        let mut rng = StdRng::seed_from_u64(6);
        let mut counts = BTreeMap::new();
        for _ in 0..100_000 {
            *counts.entry(pick(&w, rng.random()).unwrap()).or_insert(0) += 1;
        }
        for (arm, share) in &w {
            let seen = f64::from(counts[arm.as_str()]) / 100_000.0;
            assert!((seen - share).abs() < 0.01, "{arm}: {seen} vs {share}");
        }
    }

    #[test]
    fn arm_set_changes_reset_to_equal_split_and_keep_statistics() {
        let mut b = Bandit::new();
        b.set_arms(&names(&["1", "2"]));
        b.observe("1", 1.0);
        b.observe("2", 0.0);
        let mut rng = StdRng::seed_from_u64(7);
        b.update_weights(&mut rng, &Guardrails::default());
        let moved = b.weights().clone();

        b.set_arms(&names(&["2", "1"]));
        assert_eq!(
            b.weights(),
            &moved,
            "same set in another order changes nothing"
        );

        b.set_arms(&names(&["2", "3"]));
        assert_eq!(b.weights().len(), 2);
        assert!(b.weights().values().all(|&w| w == 0.5));
        assert_eq!(b.arms()["1"].count, 1, "retired arm keeps its statistics");
        assert_eq!(
            b.arms()["3"],
            ArmState::default(),
            "new arm starts at the prior"
        );

        b.set_arms(&names(&["1", "2", "3"]));
        assert!(b.weights().values().all(|&w| (w - 1.0 / 3.0).abs() < TOL));
        assert_eq!(
            b.arms()["1"].count,
            1,
            "returning arm resumes its statistics"
        );
    }

    #[test]
    fn update_weights_reports_only_real_changes() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut b = Bandit::new();
        b.set_arms(&names(&["only"]));
        assert_eq!(b.update_weights(&mut rng, &Guardrails::default()), None);

        b.set_arms(&names(&["1", "2"]));
        let frozen = Guardrails {
            frozen: true,
            ..Guardrails::default()
        };
        for _ in 0..100 {
            b.observe("2", 1.0);
            b.observe("1", 0.0);
        }
        assert_eq!(b.update_weights(&mut rng, &frozen), None);
        assert!(b.weights().values().all(|&w| w == 0.5));

        let first = b.update_weights(&mut rng, &Guardrails::default());
        assert_eq!(
            first.as_ref().map(|w| w["2"]),
            Some(0.7),
            "one max_shift step"
        );
        let mut updates = 1;
        while b.update_weights(&mut rng, &Guardrails::default()).is_some() {
            updates += 1;
        }
        assert_eq!(updates, 3, "0.5 → 0.7 → 0.9 → 0.95");
        assert!((b.weights()["2"] - 0.95).abs() < TOL);
        let pinned = b.update_weights(&mut rng, &Guardrails::default());
        assert_eq!(pinned, None, "already at the cap: nothing new to push");
    }
}
