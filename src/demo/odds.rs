//! One game's markets: their JSON shape, opening prices, how they move, and
//! the pointer names (`/moneyline/home`) that writes and test hooks use.
//!
//! Knows nothing of statuses or time; `sim` decides when prices move.

use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

use super::catalogue::Markets;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Odds {
    pub(super) moneyline: Moneyline,
    pub(super) spread: Spread,
    pub(super) total: Total,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Moneyline {
    pub(super) home: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) draw: Option<f64>,
    pub(super) away: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Spread {
    pub(super) line: f64,
    pub(super) home: f64,
    pub(super) away: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Total {
    pub(super) line: f64,
    pub(super) over: f64,
    pub(super) under: f64,
}

/// Bookmakers' margin: a market's implied probabilities sum to this.
const OVERROUND: f64 = 1.05;

impl Odds {
    pub(super) fn opening(rng: &mut StdRng, markets: &Markets) -> Odds {
        let strength = rng.random_range(0.2..0.8);
        let p_draw = if markets.draw {
            rng.random_range(0.22..0.30)
        } else {
            0.0
        };
        let price = |p: f64| round_price(1.0 / (p * OVERROUND));
        let (spread_home, spread_away) = two_way(rng);
        let (over, under) = two_way(rng);
        Odds {
            moneyline: Moneyline {
                home: price((1.0 - p_draw) * strength),
                draw: markets.draw.then(|| price(p_draw)),
                away: price((1.0 - p_draw) * (1.0 - strength)),
            },
            spread: Spread {
                line: if strength >= 0.5 {
                    -markets.spread
                } else {
                    markets.spread
                },
                home: spread_home,
                away: spread_away,
            },
            total: Total {
                line: markets.total,
                over,
                under,
            },
        }
    }

    /// The line that a pointer below `odds` names, as the sidecar's
    /// `[watch] odds` names them; `None` for lines this game lacks.
    pub(super) fn line_mut(&mut self, pointer: &str) -> Option<&mut f64> {
        let (market, line) = pointer.strip_prefix('/')?.split_once('/')?;
        match (market, line) {
            ("moneyline", "home") => Some(&mut self.moneyline.home),
            ("moneyline", "draw") => self.moneyline.draw.as_mut(),
            ("moneyline", "away") => Some(&mut self.moneyline.away),
            ("spread", "line") => Some(&mut self.spread.line),
            ("spread", "home") => Some(&mut self.spread.home),
            ("spread", "away") => Some(&mut self.spread.away),
            ("total", "line") => Some(&mut self.total.line),
            ("total", "over") => Some(&mut self.total.over),
            ("total", "under") => Some(&mut self.total.under),
            _ => None,
        }
    }

    /// Every price moves by up to ±`fraction`.
    pub(super) fn wander(&mut self, rng: &mut StdRng, fraction: f64) {
        for price in self.prices_mut() {
            *price = round_price(*price * (1.0 + rng.random_range(-fraction..fraction)));
        }
    }

    /// One price jumps by 15–35% either way: news, a goal, a red card.
    pub(super) fn jump(&mut self, rng: &mut StdRng) {
        let mut prices = self.prices_mut();
        let i = rng.random_range(0..prices.len());
        let factor: f64 = 1.0 + rng.random_range(0.15..0.35);
        let factor = if rng.random_bool(0.5) {
            factor
        } else {
            factor.recip()
        };
        *prices[i] = round_price(*prices[i] * factor);
    }

    /// The over/under line moves one step, staying positive.
    pub(super) fn move_total(&mut self, rng: &mut StdRng, step: f64) {
        let line = &mut self.total.line;
        *line = if rng.random_bool(0.5) || *line <= step {
            *line + step
        } else {
            *line - step
        };
    }

    /// Every decimal price; the handicap and total lines are not prices.
    fn prices_mut(&mut self) -> Vec<&mut f64> {
        let Odds {
            moneyline,
            spread,
            total,
        } = self;
        let mut prices = vec![&mut moneyline.home, &mut moneyline.away];
        prices.extend(moneyline.draw.as_mut());
        prices.extend([
            &mut spread.home,
            &mut spread.away,
            &mut total.over,
            &mut total.under,
        ]);
        prices
    }
}

/// The two sides of a near-even market (spread, total), margin included.
fn two_way(rng: &mut StdRng) -> (f64, f64) {
    let first = round_price(rng.random_range(1.80..2.02));
    (first, round_price(1.0 / (OVERROUND - 1.0 / first)))
}

/// Decimal odds as books quote them: two places, never below 1.01.
fn round_price(price: f64) -> f64 {
    ((price * 100.0).round() / 100.0).clamp(1.01, 101.0)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::demo::catalogue::SPORTS;

    fn opening(sport_id: &str, seed: u64) -> Odds {
        let sport = SPORTS.iter().find(|s| s.id == sport_id).unwrap();
        Odds::opening(&mut StdRng::seed_from_u64(seed), &sport.markets)
    }

    #[test]
    fn moneyline_has_a_draw_only_where_draws_happen() {
        assert!(opening("soccer", 1).moneyline.draw.is_some());
        assert!(opening("tennis", 1).moneyline.draw.is_none());
        let json = serde_json::to_value(opening("basketball", 1)).unwrap();
        assert!(json["moneyline"].get("draw").is_none());
    }

    #[test]
    fn opening_prices_carry_a_margin() {
        for seed in 0..50 {
            let odds = opening("soccer", seed);
            let ml = &odds.moneyline;
            let book = 1.0 / ml.home + 1.0 / ml.draw.unwrap() + 1.0 / ml.away;
            assert!((1.02..1.08).contains(&book), "seed {seed}: {book}");
            let book = 1.0 / odds.total.over + 1.0 / odds.total.under;
            assert!((1.02..1.08).contains(&book), "seed {seed}: {book}");
        }
    }

    #[test]
    fn pointers_name_every_line_and_nothing_else() {
        let mut odds = opening("soccer", 2);
        for pointer in [
            "/moneyline/home",
            "/moneyline/draw",
            "/moneyline/away",
            "/spread/line",
            "/spread/home",
            "/spread/away",
            "/total/line",
            "/total/over",
            "/total/under",
        ] {
            assert!(odds.line_mut(pointer).is_some(), "{pointer}");
        }
        for pointer in [
            "",
            "/",
            "moneyline/home",
            "/moneyline",
            "/moneyline/home/x",
            "/props/home",
        ] {
            assert!(odds.line_mut(pointer).is_none(), "{pointer}");
        }
        assert!(opening("tennis", 2).line_mut("/moneyline/draw").is_none());
    }

    #[test]
    fn jumps_move_one_price_past_ten_percent() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let before = opening("icehockey", rng.random());
            let mut after = before.clone();
            after.jump(&mut rng);
            let (mut a, mut b) = (before.clone(), after.clone());
            let moved: Vec<f64> = a
                .prices_mut()
                .into_iter()
                .zip(b.prices_mut())
                .map(|(x, y)| (*y - *x).abs() / *x)
                .filter(|&change| change > 0.0)
                .collect();
            assert_eq!(moved.len(), 1, "{before:?} → {after:?}");
            assert!(moved[0] > 0.10, "{before:?} → {after:?}");
        }
    }

    #[test]
    fn prices_stay_quoted_to_two_places() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut odds = opening("american_football", 4);
        for _ in 0..500 {
            odds.wander(&mut rng, 0.04);
            for price in odds.prices_mut() {
                assert!(*price >= 1.01 && ((*price * 100.0).round() - *price * 100.0).abs() < 1e-9);
            }
        }
    }
}
