//! Change detection: a new [`GameSnapshot`] against the known [`GameState`].
//!
//! [`diff`] decides whether a game changed enough to invalidate, and
//! [`next_state`] what to remember afterwards. They are split so that the
//! caller can decide the transition atomically elsewhere (a compare-and-set
//! in Redis, SPEC §6) and still use the same rules on every replica.

use super::{GameSnapshot, Lines, Reason, Status};

/// Relative slack on the threshold, far below the precision odds are quoted
/// in, so that `2.00 -> 2.20` reads as the exact 10% it is and not as
/// 10.000000000000009%.
const NOISE: f64 = 1e-9;

/// What the watcher knew about a game: last canonical status and the odds
/// baseline.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GameState {
    pub status: Status,
    /// The lines the cached entries were built from. Not the last lines
    /// seen: a slow drift must add up against it until it passes the threshold.
    pub baseline: Lines,
    /// False while no body with odds has been seen since the last
    /// invalidation, e.g. when the game was only met in a sidebar summary:
    /// the next lines then set the baseline instead of "appearing".
    #[serde(default = "yes")]
    pub baseline_known: bool,
}

fn yes() -> bool {
    true
}

/// A change worth invalidating for.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub reason: Reason,
    /// For odds movements both are the game's status, which did not change.
    pub from: Status,
    pub to: Status,
    /// For people: `status scheduled -> live`, or
    /// `line /moneyline/home 2.1 -> 2.4 (+14.3%)`.
    pub detail: String,
}

/// Compares a new snapshot with the known state (`None` = first sighting,
/// which is no change).
///
/// A status change wins over odds; a snapshot with status `Unknown` never
/// changes a known status. Odds are compared only when both sides carry
/// odds (see [`GameState::baseline_known`] and `GameSnapshot::has_odds`).
pub fn diff(known: Option<&GameState>, new: &GameSnapshot, threshold: f64) -> Option<Change> {
    let known = known?;
    if new.status != Status::Unknown && new.status != known.status {
        let reason = status_change_reason(new.status);
        return Some(Change {
            reason,
            from: known.status,
            to: new.status,
            detail: format!("status {} -> {}", known.status, new.status),
        });
    }
    if !(new.has_odds && known.baseline_known) {
        return None;
    }
    let detail = odds_movement(&known.baseline, &new.lines, threshold)?;
    Some(Change {
        reason: Reason::OddsMovement,
        from: known.status,
        to: known.status,
        detail,
    })
}

/// The state to remember after seeing `new`.
///
/// On a change, or at the first sighting, the baseline resets to the new
/// lines; otherwise it stays, so slow drift accumulates. The status follows
/// `new` unless `new` is `Unknown`.
/// The reason of a move to status `to`: `CANCELLED` or `POSTPONED` when it
/// is that, else `STATUS_CHANGE` (SPEC §5).
pub fn status_change_reason(to: Status) -> Reason {
    match to {
        Status::Cancelled => Reason::Cancelled,
        Status::Postponed => Reason::Postponed,
        _ => Reason::StatusChange,
    }
}

pub fn next_state(known: Option<&GameState>, new: &GameSnapshot, changed: bool) -> GameState {
    let status = match (new.status, known) {
        (Status::Unknown, Some(known)) => known.status,
        (status, _) => status,
    };
    let fresh_baseline = changed || known.is_none_or(|k| !k.baseline_known);
    let (baseline, baseline_known) = match known {
        _ if new.has_odds && fresh_baseline => (new.lines.clone(), true),
        Some(known) if !changed => (known.baseline.clone(), known.baseline_known),
        // Invalidated (or never seen) without odds in sight: the entries the
        // old baseline described are gone, and the next odds set a new one.
        _ => (Lines::new(), false),
    };
    GameState {
        status,
        baseline,
        baseline_known,
    }
}

/// Whether one line moved past the threshold. A line leaving 0 always has.
fn moved(old: f64, new: f64, threshold: f64) -> bool {
    if old == 0.0 {
        return new != 0.0;
    }
    // Relative to the baseline, so that up and down moves of the same
    // fraction of it are treated alike.
    (new - old).abs() / old.abs() > threshold * (1.0 + NOISE)
}

/// Describes the first line (by name) that fires, and how many others do.
fn odds_movement(old: &Lines, new: &Lines, threshold: f64) -> Option<String> {
    let mut first = None;
    let mut count = 0usize;
    let mut note = |text: &dyn Fn() -> String| {
        count += 1;
        if first.is_none() {
            first = Some(text());
        }
    };
    // Both maps are sorted by name: a merge walk finds moved, new and gone
    // lines in one pass without allocating.
    let (mut old_iter, mut new_iter) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some(&(name, &was)), None) => {
                note(&|| format!("line {name} disappeared (was {was})"));
                old_iter.next();
            }
            (None, Some(&(name, &now))) => {
                note(&|| format!("line {name} appeared ({now})"));
                new_iter.next();
            }
            (Some(&(old_name, &was)), Some(&(new_name, &now))) => match old_name.cmp(new_name) {
                std::cmp::Ordering::Less => {
                    note(&|| format!("line {old_name} disappeared (was {was})"));
                    old_iter.next();
                }
                std::cmp::Ordering::Greater => {
                    note(&|| format!("line {new_name} appeared ({now})"));
                    new_iter.next();
                }
                std::cmp::Ordering::Equal => {
                    if moved(was, now, threshold) {
                        note(&|| describe_move(old_name, was, now));
                    }
                    old_iter.next();
                    new_iter.next();
                }
            },
        }
    }
    let mut detail = first?;
    if count > 1 {
        let others = count - 1;
        let s = if others == 1 { "" } else { "s" };
        detail.push_str(&format!(", and {others} more line{s}"));
    }
    Some(detail)
}

fn describe_move(name: &str, was: f64, now: f64) -> String {
    if was == 0.0 {
        format!("line {name} 0 -> {now} (left 0)")
    } else {
        let pct = (now - was) / was.abs() * 100.0;
        format!("line {name} {was} -> {now} ({pct:+.1}%)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::GameId;
    use proptest::prelude::*;

    const T: f64 = 0.10;

    fn snap(status: Status, lines: &[(&str, f64)]) -> GameSnapshot {
        GameSnapshot {
            game_id: GameId::try_from("g-1").unwrap(),
            status,
            raw_status: None,
            sport_id: None,
            league_id: None,
            lines: lines.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            has_odds: true,
        }
    }

    fn home(x: f64) -> GameSnapshot {
        snap(
            Status::Live,
            &[("/moneyline/home", x), ("/moneyline/away", 3.6)],
        )
    }

    fn state_of(s: &GameSnapshot) -> GameState {
        next_state(None, s, false)
    }

    fn reason(known: &GameSnapshot, new: &GameSnapshot) -> Option<Reason> {
        diff(Some(&state_of(known)), new, T).map(|c| c.reason)
    }

    #[test]
    fn first_sighting_is_no_change() {
        assert_eq!(diff(None, &home(2.0), T), None);
        let state = next_state(None, &home(2.0), false);
        assert_eq!(state.status, Status::Live);
        assert_eq!(state.baseline, home(2.0).lines);
        assert!(state.baseline_known);
    }

    #[test]
    fn status_changes_and_their_reasons() {
        let from = snap(Status::Scheduled, &[]);
        let change = diff(Some(&state_of(&from)), &snap(Status::Live, &[]), T).unwrap();
        assert_eq!(change.reason, Reason::StatusChange);
        assert_eq!((change.from, change.to), (Status::Scheduled, Status::Live));
        assert_eq!(change.detail, "status scheduled -> live");
        assert_eq!(
            reason(&from, &snap(Status::Cancelled, &[])),
            Some(Reason::Cancelled)
        );
        assert_eq!(
            reason(&from, &snap(Status::Postponed, &[])),
            Some(Reason::Postponed)
        );
        assert_eq!(
            reason(&from, &snap(Status::Finished, &[])),
            Some(Reason::StatusChange)
        );
        assert_eq!(reason(&from, &snap(Status::Scheduled, &[])), None);
        // From unknown to a real status is a change: the cached copies said otherwise.
        assert_eq!(
            reason(&snap(Status::Unknown, &[]), &from),
            Some(Reason::StatusChange)
        );
    }

    #[test]
    fn status_change_wins_over_odds() {
        let new = snap(Status::Finished, &[("/moneyline/home", 9.0)]);
        assert_eq!(reason(&home(2.0), &new), Some(Reason::StatusChange));
    }

    #[test]
    fn unknown_never_changes_a_known_status() {
        let known = state_of(&home(2.0));
        let mut new = home(2.0);
        new.status = Status::Unknown;
        assert_eq!(diff(Some(&known), &new, T), None);
        assert_eq!(next_state(Some(&known), &new, false).status, Status::Live);
        // ...but its odds still count.
        new.lines.insert("/moneyline/home".into(), 3.0);
        let change = diff(Some(&known), &new, T).unwrap();
        assert_eq!(change.reason, Reason::OddsMovement);
        assert_eq!((change.from, change.to), (Status::Live, Status::Live));
    }

    #[test]
    fn movement_against_the_threshold() {
        assert_eq!(reason(&home(2.0), &home(2.18)), None, "9%");
        assert_eq!(reason(&home(2.0), &home(1.82)), None, "-9%");
        assert_eq!(
            reason(&home(2.0), &home(2.22)),
            Some(Reason::OddsMovement),
            "11%"
        );
        assert_eq!(
            reason(&home(2.0), &home(1.78)),
            Some(Reason::OddsMovement),
            "-11%"
        );
        assert_eq!(reason(&home(2.0), &home(2.20)), None, "exactly 10%");
        assert_eq!(reason(&home(2.0), &home(1.80)), None, "exactly -10%");
        assert_eq!(
            reason(&home(1.1), &home(1.21)),
            None,
            "exactly 10% in float noise"
        );
        assert_eq!(
            reason(&home(2.0), &home(2.2200001)),
            Some(Reason::OddsMovement)
        );
        assert_eq!(
            reason(&home(2.0), &home(2.2000001)),
            Some(Reason::OddsMovement)
        );
        let neg = |x| snap(Status::Live, &[("/spread/line", x)]);
        assert_eq!(reason(&neg(-0.5), &neg(-0.54)), None);
        assert_eq!(reason(&neg(-0.5), &neg(-0.75)), Some(Reason::OddsMovement));
        assert_eq!(reason(&neg(-0.5), &neg(0.5)), Some(Reason::OddsMovement));
    }

    #[test]
    fn details_name_the_first_line_and_count_the_rest() {
        let change = diff(Some(&state_of(&home(2.1))), &home(2.4), T).unwrap();
        assert_eq!(change.detail, "line /moneyline/home 2.1 -> 2.4 (+14.3%)");
        let new = snap(Status::Live, &[("/moneyline/home", 1.0), ("/x", 1.0)]);
        let change = diff(Some(&state_of(&home(2.1))), &new, T).unwrap();
        assert_eq!(
            change.detail,
            "line /moneyline/away disappeared (was 3.6), and 2 more lines"
        );
    }

    #[test]
    fn slow_drift_fires_once_past_the_threshold() {
        let mut state = state_of(&home(2.0));
        let mut fired = Vec::new();
        let mut x = 2.0;
        for step in 1..=5 {
            x *= 1.04;
            let new = home(x);
            let change = diff(Some(&state), &new, T);
            if change.is_some() {
                fired.push(step);
            }
            state = next_state(Some(&state), &new, change.is_some());
        }
        // 4%, 8.2%, 12.5% (fires, baseline resets), 4%, 8.2%.
        assert_eq!(fired, [3]);
        assert_eq!(state.baseline["/moneyline/home"], 2.0 * 1.04f64.powi(3));
    }

    #[test]
    fn lines_appearing_disappearing_or_leaving_zero_fire() {
        let base = snap(Status::Live, &[("/a", 2.0), ("/z", 0.0)]);
        let appeared = snap(Status::Live, &[("/a", 2.0), ("/b", 1.5), ("/z", 0.0)]);
        let gone = snap(Status::Live, &[("/z", 0.0)]);
        let left_zero = snap(Status::Live, &[("/a", 2.0), ("/z", 0.01)]);
        let to_zero = snap(Status::Live, &[("/a", 0.0), ("/z", 0.0)]);
        for (new, detail) in [
            (&appeared, "line /b appeared (1.5)"),
            (&gone, "line /a disappeared (was 2)"),
            (&left_zero, "line /z 0 -> 0.01 (left 0)"),
            (&to_zero, "line /a 2 -> 0 (-100.0%)"),
        ] {
            let change = diff(Some(&state_of(&base)), new, T).unwrap();
            assert_eq!(
                (change.reason, change.detail.as_str()),
                (Reason::OddsMovement, detail)
            );
        }
        assert_eq!(reason(&base, &base), None);
        let neg_zero = snap(Status::Live, &[("/a", 2.0), ("/z", -0.0)]);
        assert_eq!(reason(&base, &neg_zero), None);
    }

    #[test]
    fn summaries_without_odds_neither_move_nor_reset_the_baseline() {
        let known = state_of(&home(2.0));
        let mut summary = snap(Status::Live, &[]);
        summary.has_odds = false;
        assert_eq!(diff(Some(&known), &summary, T), None);
        assert_eq!(next_state(Some(&known), &summary, false), known);

        // A game first met in a sidebar gets its baseline from the first odds.
        let first = next_state(None, &summary, false);
        assert!(!first.baseline_known);
        assert_eq!(diff(Some(&first), &home(2.0), T), None);
        assert_eq!(next_state(Some(&first), &home(2.0), false), known);

        // A summary that invalidates leaves no baseline behind.
        summary.status = Status::Finished;
        assert!(diff(Some(&known), &summary, T).is_some());
        let after = next_state(Some(&known), &summary, true);
        assert_eq!(
            (after.status, after.baseline_known),
            (Status::Finished, false)
        );
        let mut odds = home(9.0);
        odds.status = Status::Finished;
        assert_eq!(diff(Some(&after), &odds, T), None);
    }

    #[test]
    fn next_state_resets_on_change_and_keeps_otherwise() {
        let known = state_of(&home(2.0));
        let kept = next_state(Some(&known), &home(2.1), false);
        assert_eq!(kept.baseline, known.baseline);
        let reset = next_state(Some(&known), &home(2.5), true);
        assert_eq!(reset.baseline, home(2.5).lines);
        let mut later = home(2.0);
        later.status = Status::Finished;
        assert_eq!(
            next_state(Some(&known), &later, false).status,
            Status::Finished
        );
    }

    #[test]
    fn game_state_serde() {
        let state = state_of(&home(2.0));
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<GameState>(&json).unwrap(), state);
        let old: GameState =
            serde_json::from_str(r#"{"status":"live","baseline":{"/a":1.5}}"#).unwrap();
        assert!(old.baseline_known);
    }

    proptest! {
        #[test]
        fn moves_within_the_threshold_never_fire(
            lines in prop::collection::vec(
                (0.01f64..1000.0, any::<bool>(), 0.0f64..0.999_999, any::<bool>()), 1..8),
            threshold in 0.01f64..1.0,
        ) {
            // Every line of the game moves, each by less than the threshold,
            // up or down: nothing is invalidated and the baseline stays.
            let named = |i: usize| format!("/l{i}");
            let (mut was, mut now) = (Lines::new(), Lines::new());
            for (i, &(old, negative, frac, up)) in lines.iter().enumerate() {
                let old = if negative { -old } else { old };
                let t = frac * threshold;
                was.insert(named(i), old);
                now.insert(named(i), old * if up { 1.0 + t } else { 1.0 - t });
            }
            let mut known = state_of(&snap(Status::Live, &[]));
            known.baseline = was;
            let mut new = snap(Status::Live, &[]);
            new.lines = now;
            prop_assert_eq!(diff(Some(&known), &new, threshold), None);
            prop_assert_eq!(next_state(Some(&known), &new, false), known);
        }

        #[test]
        fn a_move_fires_iff_its_relative_size_exceeds_the_threshold(
            a in -1000.0f64..1000.0, b in -1000.0f64..1000.0, threshold in 0.001f64..2.0,
        ) {
            let relative = (b - a).abs() / a.abs();
            // Within float noise of the threshold either answer is right.
            prop_assume!(a == 0.0 || (relative / threshold - 1.0).abs() > 1e-6);
            let expected = if a == 0.0 { b != 0.0 } else { relative > threshold };
            let known = state_of(&snap(Status::Live, &[("/l", a)]));
            let change = diff(Some(&known), &snap(Status::Live, &[("/l", b)]), threshold);
            prop_assert_eq!(change.is_some(), expected, "{} -> {}: {}", a, b, relative);
        }

        #[test]
        fn up_and_down_moves_of_one_size_are_treated_alike(
            old in 0.01f64..1000.0, negative: bool, threshold in 0.01f64..1.0,
            frac in 0.0f64..3.0,
        ) {
            prop_assume!((frac - 1.0).abs() > 1e-6);
            let old = if negative { -old } else { old };
            let delta = frac * threshold * old.abs();
            let known = state_of(&snap(Status::Live, &[("/l", old)]));
            let fires = |new: f64| diff(Some(&known), &snap(Status::Live, &[("/l", new)]), threshold)
                .map(|c| c.reason);
            let (up, down) = (fires(old + delta), fires(old - delta));
            prop_assert_eq!(up, down, "{} +/- {}", old, delta);
            prop_assert_eq!(up.is_some(), frac > 1.0);
        }

        #[test]
        fn moves_past_the_threshold_always_fire(
            old in 0.01f64..1000.0, negative: bool, threshold in 0.01f64..1.0,
            frac in 1.000_001f64..10.0, up: bool,
        ) {
            let old = if negative { -old } else { old };
            let t = frac * threshold;
            let new = old * if up { 1.0 + t } else { 1.0 - t };
            let known = state_of(&snap(Status::Live, &[("/l", old)]));
            let change = diff(Some(&known), &snap(Status::Live, &[("/l", new)]), threshold);
            prop_assert_eq!(change.map(|c| c.reason), Some(Reason::OddsMovement));
        }

        #[test]
        fn a_walk_fires_exactly_when_it_leaves_the_band(
            start in 0.5f64..50.0, steps in prop::collection::vec(-0.06f64..0.06, 1..40),
        ) {
            let mut state = state_of(&snap(Status::Live, &[("/l", start)]));
            let mut x = start;
            for step in steps {
                x *= 1.0 + step;
                let base = state.baseline["/l"];
                let ratio = (x - base).abs() / base.abs();
                let new = snap(Status::Live, &[("/l", x)]);
                let change = diff(Some(&state), &new, T);
                if (ratio - T).abs() > 1e-6 {
                    prop_assert_eq!(change.is_some(), ratio > T, "ratio {}", ratio);
                }
                state = next_state(Some(&state), &new, change.is_some());
            }
        }
    }
}
