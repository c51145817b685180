//! The simulated world: the games, how they are invented, and how their
//! statuses progress and their odds drift tick by tick.
//!
//! Pure: one seeded `StdRng` makes every choice, so a seed replays the same
//! statuses and prices. Only timestamps come from the caller's clock (`now`).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::catalogue::{self, League, Sport};
use super::odds::Odds;

/// Whole seconds since the Unix epoch: the resolution of `updated_at` and of
/// `Last-Modified`.
pub(super) type UnixSecs = u64;

pub(super) struct World {
    rng: StdRng,
    games: Vec<Game>,
    /// game_id → position in `games`; games are never added or removed.
    index: HashMap<String, usize>,
}

pub(super) struct Game {
    pub(super) id: String,
    pub(super) sport: &'static Sport,
    pub(super) league: &'static League,
    /// Raw upstream vocabulary, never canonical: mapping it is the sidecar's
    /// job, and that is what the demo exercises.
    pub(super) status: String,
    pub(super) start_time: UnixSecs,
    pub(super) home: &'static str,
    pub(super) away: &'static str,
    pub(super) odds: Odds,
    pub(super) updated_at: UnixSecs,
    plan: Plan,
}

/// A game's hidden script: what it does next.
#[derive(Clone, Copy, Debug)]
struct Plan {
    fate: Fate,
    /// Feeds say `in_progress` or `live` for the same thing; each game sticks
    /// to one so both reach the sidecar.
    in_play: &'static str,
    /// Halftime comes at most once a game.
    had_break: bool,
    /// Ticks since the status last changed, so phases have a minimum length.
    ticks: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Play,
    Cancel,
    Postpone,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

impl World {
    /// Invents `count` games spread round-robin over the catalogue's leagues,
    /// in mixed opening states so the demo has something live from the start.
    pub(super) fn new(count: usize, seed: u64, now: UnixSecs) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let leagues: Vec<_> = catalogue::leagues().collect();
        let rosters: Vec<Vec<&'static str>> = leagues
            .iter()
            .map(|(_, league)| {
                let mut teams = league.teams.to_vec();
                teams.shuffle(&mut rng);
                teams
            })
            .collect();
        let mut games = Vec::with_capacity(count);
        for i in 0..count {
            let (sport, league) = leagues[i % leagues.len()];
            let (home, away) = fixture(&rosters[i % leagues.len()], i / leagues.len());
            games.push(Game::open(
                &mut rng,
                format!("g-{}", 1001 + i),
                sport,
                league,
                home,
                away,
                now,
            ));
        }
        assign_fates(&mut rng, &mut games);
        let index = games
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id.clone(), i))
            .collect();
        World { rng, games, index }
    }

    pub(super) fn tick(&mut self, now: UnixSecs) {
        for game in &mut self.games {
            game.advance(&mut self.rng, now);
        }
    }

    pub(super) fn games(&self) -> &[Game] {
        &self.games
    }

    pub(super) fn get(&self, id: &str) -> Option<&Game> {
        self.index.get(id).map(|&i| &self.games[i])
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut Game> {
        self.index.get(id).map(|&i| &mut self.games[i])
    }
}

/// The `round`-th fixture of a roster: each round pairs every team once, and
/// later rounds rotate opponents (the offset is odd, so never a team with itself).
fn fixture(roster: &[&'static str], round: usize) -> (&'static str, &'static str) {
    let pairs = roster.len() / 2;
    let (cycle, slot) = (round / pairs, round % pairs);
    (
        roster[2 * slot],
        roster[(2 * slot + 1 + 2 * cycle) % roster.len()],
    )
}

/// Guarantees a few cancellations and postponements in every season, so the
/// sidecar's handling of them is always on show rather than left to chance.
fn assign_fates(rng: &mut StdRng, games: &mut [Game]) {
    let mut scheduled: Vec<usize> = (0..games.len())
        .filter(|&i| games[i].status == "scheduled")
        .collect();
    scheduled.shuffle(rng);
    let cancels = (games.len() / 18).max(1);
    let postpones = (games.len() / 12).max(1);
    for (n, &i) in scheduled.iter().take(cancels + postpones).enumerate() {
        games[i].plan.fate = if n < cancels {
            Fate::Cancel
        } else {
            Fate::Postpone
        };
    }
}

impl Game {
    fn open(
        rng: &mut StdRng,
        id: String,
        sport: &'static Sport,
        league: &'static League,
        home: &'static str,
        away: &'static str,
        now: UnixSecs,
    ) -> Game {
        let minute = now - now % MINUTE;
        let in_play = if rng.random_bool(0.25) {
            "live"
        } else {
            "in_progress"
        };
        let (status, start_time, ticks) = match rng.random_range(0..20) {
            0..10 => ("scheduled", minute + rng.random_range(30..2880) * MINUTE, 0),
            10..13 => ("pre_game", minute + rng.random_range(5..30) * MINUTE, 0),
            13..18 => (
                in_play,
                minute.saturating_sub(rng.random_range(10..80) * MINUTE),
                rng.random_range(0..8),
            ),
            _ => (
                "final",
                minute.saturating_sub(rng.random_range(3..6) * HOUR),
                0,
            ),
        };
        let had_break = status == in_play && rng.random_bool(0.5);
        Game {
            id,
            sport,
            league,
            status: status.to_owned(),
            start_time,
            home,
            away,
            odds: Odds::opening(rng, &sport.markets),
            updated_at: now,
            plan: Plan {
                fate: Fate::Play,
                in_play,
                had_break,
                ticks,
            },
        }
    }

    /// A status change from outside the script; the script carries on from it.
    pub(super) fn restatus(&mut self, status: String) {
        self.status = status;
        self.plan.ticks = 0;
    }

    pub(super) fn touch(&mut self, now: UnixSecs) {
        // Never backwards, even if the wall clock steps back.
        self.updated_at = self.updated_at.max(now);
    }

    fn advance(&mut self, rng: &mut StdRng, now: UnixSecs) {
        self.plan.ticks = self.plan.ticks.saturating_add(1);
        let moved = self.progress(rng, now) | self.drift(rng);
        if moved {
            self.touch(now);
        }
    }

    /// One step of the status script; true if the status changed.
    fn progress(&mut self, rng: &mut StdRng, now: UnixSecs) -> bool {
        let minute = now - now % MINUTE;
        let markets = &self.sport.markets;
        let ticks = self.plan.ticks;
        let next = match self.status.as_str() {
            "scheduled" if ticks >= 2 && rng.random_bool(0.25) => match self.plan.fate {
                Fate::Cancel => "cancelled",
                Fate::Postpone => "postponed",
                Fate::Play => {
                    self.start_time = minute + 5 * MINUTE;
                    "pre_game"
                }
            },
            "pre_game" if rng.random_bool(0.3) => {
                self.start_time = now;
                self.plan.in_play
            }
            "in_progress" | "live" => {
                if markets.halftime && !self.plan.had_break {
                    if ticks < 6 || !rng.random_bool(0.2) {
                        return false;
                    }
                    self.plan.had_break = true;
                    "halftime"
                } else if markets.suspends && rng.random_bool(0.02) {
                    "suspended"
                } else if ticks >= 8 && rng.random_bool(0.1) {
                    "final"
                } else {
                    return false;
                }
            }
            "halftime" if ticks >= 2 && rng.random_bool(0.5) => self.plan.in_play,
            "suspended" if rng.random_bool(0.3) => self.plan.in_play,
            "postponed" if ticks >= 15 && rng.random_bool(0.1) => {
                self.plan.fate = Fate::Play;
                self.start_time = minute + rng.random_range(24..72) * HOUR;
                "scheduled"
            }
            // Recycled as a new fixture so a long-running demo never goes quiet.
            "final" | "finished" | "cancelled" if ticks >= 30 && rng.random_bool(0.05) => {
                self.rematch(rng, minute);
                "scheduled"
            }
            _ => return false,
        };
        self.status = next.to_owned();
        self.plan.ticks = 0;
        true
    }

    fn rematch(&mut self, rng: &mut StdRng, minute: UnixSecs) {
        self.start_time = minute + rng.random_range(1..48) * HOUR;
        self.odds = Odds::opening(rng, &self.sport.markets);
        self.plan = Plan {
            fate: match rng.random_range(0..100) {
                0..3 => Fate::Cancel,
                3..8 => Fate::Postpone,
                _ => Fate::Play,
            },
            in_play: self.plan.in_play,
            had_break: false,
            ticks: 0,
        };
    }

    /// Prices wander a few percent, in play more than before it, with the
    /// occasional jump past the sidecar's 10% movement threshold. Markets are
    /// closed at halftime, while suspended, and once settled.
    fn drift(&mut self, rng: &mut StdRng) -> bool {
        let in_play = match self.status.as_str() {
            "scheduled" | "pre_game" => false,
            "in_progress" | "live" => true,
            _ => return false,
        };
        let (p_move, wander, p_jump) = if in_play {
            (0.7, 0.04, 0.06)
        } else {
            (0.5, 0.02, 0.03)
        };
        let before = self.odds.clone();
        if rng.random_bool(p_move) {
            self.odds.wander(rng, wander);
        }
        if rng.random_bool(p_jump) {
            self.odds.jump(rng);
        }
        if in_play && rng.random_bool(0.05) {
            self.odds.move_total(rng, self.sport.markets.total_step);
        }
        self.odds != before
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// 2026-11-25T20:31:07Z, the SPEC's example instant.
    const NOW: UnixSecs = 1_795_638_667;

    fn snapshot(world: &World) -> Vec<(String, String, Odds)> {
        world
            .games()
            .iter()
            .map(|g| (g.id.clone(), g.status.clone(), g.odds.clone()))
            .collect()
    }

    #[test]
    fn games_are_numbered_and_spread_over_every_league() {
        let world = World::new(36, 7, NOW);
        let ids: Vec<_> = world.games().iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"g-1001"));
        assert_eq!(ids.last(), Some(&"g-1036"));
        let leagues: BTreeSet<_> = world
            .games()
            .iter()
            .map(|g| (g.sport.id, g.league.id))
            .collect();
        assert_eq!(leagues.len(), catalogue::leagues().count());
        for game in world.games() {
            assert_ne!(game.home, game.away, "{}", game.id);
            assert!(game.updated_at == NOW);
        }
        assert!(world.get("g-1036").is_some() && world.get("g-1037").is_none());
    }

    #[test]
    fn large_worlds_rotate_opponents() {
        let world = World::new(200, 7, NOW);
        for game in world.games() {
            assert_ne!(game.home, game.away, "{}", game.id);
        }
    }

    #[test]
    fn a_seed_replays_the_same_season() {
        let (mut a, mut b, mut c) = (
            World::new(36, 11, NOW),
            World::new(36, 11, NOW + 5),
            World::new(36, 12, NOW),
        );
        for t in 0..60 {
            a.tick(NOW + t);
            b.tick(NOW + t + 5);
            c.tick(NOW + t);
        }
        assert_eq!(snapshot(&a), snapshot(&b));
        assert_ne!(snapshot(&a), snapshot(&c));
    }

    #[test]
    fn seasons_show_every_status_the_sidecar_maps() {
        for seed in 0..4 {
            let mut world = World::new(36, seed, NOW);
            let mut seen = BTreeSet::new();
            for t in 0..300 {
                seen.extend(world.games().iter().map(|g| g.status.clone()));
                world.tick(NOW + t);
            }
            for status in [
                "scheduled",
                "pre_game",
                "in_progress",
                "live",
                "halftime",
                "suspended",
                "final",
                "cancelled",
                "postponed",
            ] {
                assert!(
                    seen.contains(status),
                    "seed {seed} never showed {status}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn odds_drift_mostly_gently_with_occasional_jumps() {
        let mut world = World::new(36, 5, NOW);
        let (mut gentle, mut jumps) = (0, 0);
        for t in 1..=100 {
            let before = snapshot(&world);
            world.tick(NOW + t);
            for ((_, was, old), (_, is, new)) in before.iter().zip(snapshot(&world)) {
                let open = |s: &str| matches!(s, "scheduled" | "pre_game" | "in_progress" | "live");
                if !open(was) && !open(&is) {
                    assert_eq!(*old, new, "closed markets must not move");
                    continue;
                }
                let change = (new.moneyline.home - old.moneyline.home).abs() / old.moneyline.home;
                if change > 0.10 {
                    jumps += 1;
                } else if change > 0.0 {
                    gentle += 1;
                }
            }
        }
        assert!(
            jumps > 0 && gentle > 10 * jumps,
            "gentle {gentle}, jumps {jumps}"
        );
    }

    #[test]
    fn ticks_bump_updated_at_only_for_games_that_changed() {
        let mut world = World::new(36, 9, NOW);
        world.tick(NOW + 100);
        let bumped = world
            .games()
            .iter()
            .filter(|g| g.updated_at == NOW + 100)
            .count();
        assert!(bumped > 0 && bumped < 36, "{bumped}");
        world.tick(NOW - 50);
        assert!(
            world.games().iter().all(|g| g.updated_at >= NOW),
            "updated_at went backwards"
        );
    }
}
