//! An interrupted claim's progress as a state machine: `step(stage, event) -> (effects, stage)`.
//!
//! The InterruptionHandler observes the claim, calls [`step`] with [`Event::Observed`], and carries
//! out the effects in order; each effect's outcome is fed back as its own event, whose effects
//! run before the rest. One round: mark the reclaimed spot offering unavailable (once), plan
//! replacement capacity for the node's pods while none exists (once the last hand-over had time to
//! show up), taint the node, and start the drain (delete the claim) once the replacement is ready
//! or the deadline leaves only the drain's time. A claim without a node has nothing to move: it is
//! removed and its pods are batched again. A new leader starts from [`Stage::default`]: every
//! step is read back from the cluster, and each is idempotent.

use std::collections::HashSet;
use std::time::Duration;

/// How long replacements handed to the launcher may take to appear before the node's pods are
/// planned again.
pub const LAUNCH_SETTLE: Duration = Duration::from_secs(5);

/// Where one interrupted claim stands, as this leader has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Being replaced and tainted; the drain has not started.
    Acting(Progress),
    /// The claim had no node: this leader deleted it, and its pods are batched again.
    Removed,
    /// This leader deleted the claim to start its drain; the Terminator has it now. Until the cache
    /// shows the deletion the claim still looks live, and is neither planned for nor drained again.
    Draining,
}

impl Default for Stage {
    fn default() -> Self {
        Stage::Acting(Progress::default())
    }
}

/// What has been done while [`Stage::Acting`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The reclaimed spot offering was marked unavailable (or there was none to mark).
    pub marked: bool,
    /// When replacements were last handed to the launcher (on the caller's monotonic clock), and
    /// how many.
    pub launched: Option<(Duration, usize)>,
    /// The replacement plan has been reported (its span and log line) at least once.
    pub reported: bool,
    /// The node carries the disrupted taint.
    pub tainted: bool,
    /// Pods the last replacement plan could place nowhere: they do not hold up the drain.
    pub unplaceable: HashSet<String>,
}

/// The claim as the caches show it this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The caller's monotonic clock.
    pub now: Duration,
    /// A Node is registered for the claim's instance.
    pub has_node: bool,
    /// The notice reclaims a spot offering the claim was launched from.
    pub exhausts_spot_offering: bool,
    /// Live claims that replace this one.
    pub replacements: usize,
    /// There are replacements and every one is Initialized.
    pub replacements_initialized: bool,
    /// The deadline leaves only the time the drain needs.
    pub deadline_reached: bool,
}

/// What happened: an observation, or the outcome of an effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Observed(Observed),
    /// [`Effect::Remove`] ran.
    Removed {
        ok: bool,
    },
    /// [`Effect::PlanReplacement`] produced a plan buying `claims`, which could place these pods nowhere.
    Planned {
        claims: usize,
        unplaceable: HashSet<String>,
    },
    /// [`Effect::PlanReplacement`] failed; the next round plans again.
    PlanFailed,
    /// The launcher took `claims` replacement claims at `now`.
    HandedOver {
        now: Duration,
        claims: usize,
    },
    /// [`Effect::Taint`] ran.
    Tainted {
        ok: bool,
    },
    /// [`Effect::CheckReady`] found the pods that must move placeable on ready capacity (or not).
    ReadyChecked {
        ready: bool,
        forced: bool,
    },
    /// [`Effect::StartDrain`] ran.
    DrainStarted {
        ok: bool,
    },
}

/// What the actor does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Delete the claim and batch its pods again: it has no node to drain.
    Remove,
    /// Mark the reclaimed spot offering unavailable, in the catalog and the cloud.
    MarkUnavailable,
    /// Plan the node's pods as if it were gone (claims in flight count as capacity).
    PlanReplacement,
    /// Report the plan (span and log), and hand its claims to the launcher if it buys any.
    HandOver,
    /// Taint the node so nothing new lands on it.
    Taint,
    /// Check whether the pods that must move fit on ready capacity now; `forced`: the drain
    /// starts whatever the answer.
    CheckReady { forced: bool },
    /// Delete the claim: the Terminator drains it.
    StartDrain { replacement_ready: bool },
}

/// One transition.
pub fn step(stage: Stage, event: Event) -> (Vec<Effect>, Stage) {
    let mut progress = match stage {
        Stage::Acting(progress) => progress,
        done => return (Vec::new(), done),
    };
    let mut effects = Vec::new();
    match event {
        Event::Observed(seen) => {
            if !seen.has_node {
                return (vec![Effect::Remove], Stage::Acting(progress));
            }
            if !progress.marked {
                if seen.exhausts_spot_offering {
                    effects.push(Effect::MarkUnavailable);
                }
                progress.marked = true;
            }
            // The replacement is bought once: while claims made for it exist it is not planned
            // again (other pods may take room it planned on, and they get capacity of their own).
            let settled = progress.launched.is_none_or(|(at, expected)| {
                seen.replacements >= expected || seen.now.saturating_sub(at) >= LAUNCH_SETTLE
            });
            if settled && seen.replacements == 0 {
                effects.push(Effect::PlanReplacement);
            }
            if !progress.tainted {
                effects.push(Effect::Taint);
            }
            effects.push(if seen.replacements_initialized {
                Effect::StartDrain { replacement_ready: true }
            } else {
                Effect::CheckReady { forced: seen.deadline_reached }
            });
        }
        Event::Removed { ok: true } => return (effects, Stage::Removed),
        Event::Planned { claims, unplaceable } => {
            progress.unplaceable = unplaceable;
            if claims > 0 || !progress.reported {
                effects.push(Effect::HandOver);
                progress.reported = true;
            }
        }
        Event::HandedOver { now, claims } => progress.launched = Some((now, claims)),
        Event::Tainted { ok } => progress.tainted = ok,
        Event::ReadyChecked { ready, forced } => {
            if ready || forced {
                effects.push(Effect::StartDrain { replacement_ready: ready });
            }
        }
        Event::DrainStarted { ok: true } => return (effects, Stage::Draining),
        Event::Removed { ok: false } | Event::PlanFailed | Event::DrainStarted { ok: false } => {}
    }
    (effects, Stage::Acting(progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Observed {
        Observed { now: Duration::from_secs(100), has_node: true, ..Observed::default() }
    }

    fn acting(f: impl FnOnce(&mut Progress)) -> Stage {
        let mut p = Progress::default();
        f(&mut p);
        Stage::Acting(p)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_transition_gives_its_effects_and_next_stage() {
        use Effect::*;
        let marked = |p: &mut Progress| p.marked = true;
        let done = |p: &mut Progress| {
            p.marked = true;
            p.tainted = true;
            p.reported = true;
        };
        let cases: Vec<(&str, Stage, Event, Vec<Effect>, Stage)> = vec![
            (
                "a first look at a reclaimed spot node marks, plans, taints and checks readiness",
                Stage::default(),
                Event::Observed(Observed { exhausts_spot_offering: true, ..seen() }),
                vec![MarkUnavailable, PlanReplacement, Taint, CheckReady { forced: false }],
                acting(marked),
            ),
            (
                "an on-demand notice has no offering to mark, but is marked as handled",
                Stage::default(),
                Event::Observed(seen()),
                vec![PlanReplacement, Taint, CheckReady { forced: false }],
                acting(marked),
            ),
            (
                "a claim without a node is removed and nothing else",
                Stage::default(),
                Event::Observed(Observed { has_node: false, exhausts_spot_offering: true, ..seen() }),
                vec![Remove],
                Stage::default(),
            ),
            (
                "a removal that worked ends the work",
                Stage::default(),
                Event::Removed { ok: true },
                vec![],
                Stage::Removed,
            ),
            (
                "a removal that failed is tried again next round",
                Stage::default(),
                Event::Removed { ok: false },
                vec![],
                Stage::default(),
            ),
            (
                "existing replacements are not planned again",
                acting(done),
                Event::Observed(Observed { replacements: 2, ..seen() }),
                vec![CheckReady { forced: false }],
                acting(done),
            ),
            (
                "replacements handed over moments ago are not planned again before they show",
                acting(|p| {
                    done(p);
                    p.launched = Some((secs(98), 2));
                }),
                Event::Observed(seen()),
                vec![CheckReady { forced: false }],
                acting(|p| {
                    done(p);
                    p.launched = Some((secs(98), 2));
                }),
            ),
            (
                "replacements that never showed within the settle time are planned again",
                acting(|p| {
                    done(p);
                    p.launched = Some((secs(95), 2));
                }),
                Event::Observed(seen()),
                vec![PlanReplacement, CheckReady { forced: false }],
                acting(|p| {
                    done(p);
                    p.launched = Some((secs(95), 2));
                }),
            ),
            (
                "initialized replacements start the drain without a readiness check",
                acting(done),
                Event::Observed(Observed { replacements: 1, replacements_initialized: true, ..seen() }),
                vec![StartDrain { replacement_ready: true }],
                acting(done),
            ),
            (
                "a reached deadline forces the check's outcome",
                acting(done),
                Event::Observed(Observed { replacements: 1, deadline_reached: true, ..seen() }),
                vec![CheckReady { forced: true }],
                acting(done),
            ),
            (
                "a plan that buys claims is reported and handed over, and its unplaceable pods kept",
                acting(marked),
                Event::Planned { claims: 2, unplaceable: ["ns/a".to_string()].into() },
                vec![HandOver],
                acting(|p| {
                    marked(p);
                    p.reported = true;
                    p.unplaceable = ["ns/a".to_string()].into();
                }),
            ),
            (
                "the first plan is reported even when it buys nothing",
                acting(marked),
                Event::Planned { claims: 0, unplaceable: HashSet::new() },
                vec![HandOver],
                acting(|p| {
                    marked(p);
                    p.reported = true;
                }),
            ),
            (
                "a later plan that buys nothing is not reported again",
                acting(done),
                Event::Planned { claims: 0, unplaceable: HashSet::new() },
                vec![],
                acting(done),
            ),
            ("a failed plan changes nothing", acting(done), Event::PlanFailed, vec![], acting(done)),
            (
                "a hand-over is remembered with its time and size",
                acting(done),
                Event::HandedOver { now: secs(100), claims: 3 },
                vec![],
                acting(|p| {
                    done(p);
                    p.launched = Some((secs(100), 3));
                }),
            ),
            (
                "a taint that worked is not made again",
                acting(marked),
                Event::Tainted { ok: true },
                vec![],
                acting(|p| {
                    marked(p);
                    p.tainted = true;
                }),
            ),
            (
                "a taint that failed is tried again",
                acting(marked),
                Event::Tainted { ok: false },
                vec![],
                acting(marked),
            ),
            (
                "ready capacity starts the drain",
                acting(done),
                Event::ReadyChecked { ready: true, forced: false },
                vec![StartDrain { replacement_ready: true }],
                acting(done),
            ),
            (
                "no ready capacity and time left waits",
                acting(done),
                Event::ReadyChecked { ready: false, forced: false },
                vec![],
                acting(done),
            ),
            (
                "no ready capacity and no time left drains anyway",
                acting(done),
                Event::ReadyChecked { ready: false, forced: true },
                vec![StartDrain { replacement_ready: false }],
                acting(done),
            ),
            (
                "a started drain hands the claim over",
                acting(done),
                Event::DrainStarted { ok: true },
                vec![],
                Stage::Draining,
            ),
            (
                "a drain that could not start is tried again",
                acting(done),
                Event::DrainStarted { ok: false },
                vec![],
                acting(done),
            ),
            (
                "a draining claim is left to the Terminator",
                Stage::Draining,
                Event::Observed(Observed { exhausts_spot_offering: true, ..seen() }),
                vec![],
                Stage::Draining,
            ),
            ("a removed claim stays removed", Stage::Removed, Event::Observed(seen()), vec![], Stage::Removed),
        ];
        for (what, stage, event, effects, next) in cases {
            assert_eq!(step(stage, event), (effects, next), "{what}");
        }
    }

    #[test]
    fn a_spot_interruption_runs_from_notice_to_drain_in_rounds() {
        // Round 1: the notice is new.
        let (effects, stage) =
            step(Stage::default(), Event::Observed(Observed { exhausts_spot_offering: true, ..seen() }));
        assert_eq!(effects[0], Effect::MarkUnavailable);
        let (effects, stage) = step(stage, Event::Planned { claims: 1, unplaceable: HashSet::new() });
        assert_eq!(effects, vec![Effect::HandOver]);
        let (_, stage) = step(stage, Event::HandedOver { now: secs(100), claims: 1 });
        let (_, stage) = step(stage, Event::Tainted { ok: true });
        let (effects, stage) = step(stage, Event::ReadyChecked { ready: false, forced: false });
        assert!(effects.is_empty());
        // Round 2: the replacement shows, not yet ready; nothing is bought or tainted again.
        let round2 = Observed { now: secs(101), exhausts_spot_offering: true, replacements: 1, ..seen() };
        let (effects, stage) = step(stage, Event::Observed(round2));
        assert_eq!(effects, vec![Effect::CheckReady { forced: false }]);
        // Round 3: it is initialized; the drain starts and the claim is handed over.
        let round3 = Observed { now: secs(130), replacements: 1, replacements_initialized: true, ..seen() };
        let (effects, stage) = step(stage, Event::Observed(round3));
        assert_eq!(effects, vec![Effect::StartDrain { replacement_ready: true }]);
        let (_, stage) = step(stage, Event::DrainStarted { ok: true });
        assert_eq!(stage, Stage::Draining);
    }
}
