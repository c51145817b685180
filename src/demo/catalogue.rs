//! The static sports catalogue served at `/api/v1/sports`, and what the
//! simulator needs to invent games in it: each sport's market shape and each
//! league's roster.
//!
//! Serialised as-is for the catalogue, so the `#[serde(skip)]` fields are the
//! simulator's private knowledge and never reach the wire.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub(super) struct Sport {
    #[serde(rename = "sport_id")]
    pub(super) id: &'static str,
    pub(super) name: &'static str,
    pub(super) leagues: &'static [League],
    #[serde(skip)]
    pub(super) markets: Markets,
}

#[derive(Debug, Serialize)]
pub(super) struct League {
    #[serde(rename = "league_id")]
    pub(super) id: &'static str,
    pub(super) name: &'static str,
    /// An even number of names, so every fixture pairs two different teams.
    #[serde(skip)]
    pub(super) teams: &'static [&'static str],
}

/// How a sport's games are shaped and priced.
#[derive(Debug)]
pub(super) struct Markets {
    /// Three-way moneyline; only where a draw is a result.
    pub(super) draw: bool,
    /// In-play games pause once at `halftime`.
    pub(super) halftime: bool,
    /// Play can be `suspended` (rain and medical delays in tennis).
    pub(super) suspends: bool,
    /// Handicap given to the favourite, in goals or points.
    pub(super) spread: f64,
    /// Opening over/under line.
    pub(super) total: f64,
    /// How far one line move shifts the total.
    pub(super) total_step: f64,
}

/// The body of `GET /api/v1/sports`.
#[derive(Serialize)]
pub(super) struct CatalogueBody {
    pub(super) sports: &'static [Sport],
}

pub(super) static SPORTS: &[Sport] = &[
    Sport {
        id: "soccer",
        name: "Soccer",
        leagues: &[
            League {
                id: "epl",
                name: "Premier League",
                teams: &[
                    "Arsenal",
                    "Chelsea",
                    "Liverpool",
                    "Manchester City",
                    "Manchester United",
                    "Tottenham Hotspur",
                    "Newcastle United",
                    "Aston Villa",
                    "Brighton",
                    "West Ham United",
                    "Everton",
                    "Fulham",
                ],
            },
            League {
                id: "laliga",
                name: "La Liga",
                teams: &[
                    "Real Madrid",
                    "Barcelona",
                    "Atletico Madrid",
                    "Sevilla",
                    "Real Sociedad",
                    "Villarreal",
                    "Real Betis",
                    "Athletic Club",
                    "Valencia",
                    "Girona",
                    "Celta Vigo",
                    "Osasuna",
                ],
            },
        ],
        markets: Markets {
            draw: true,
            halftime: true,
            suspends: false,
            spread: 0.5,
            total: 2.5,
            total_step: 0.5,
        },
    },
    Sport {
        id: "basketball",
        name: "Basketball",
        leagues: &[League {
            id: "nba",
            name: "NBA",
            teams: &[
                "Boston Celtics",
                "Los Angeles Lakers",
                "Golden State Warriors",
                "Milwaukee Bucks",
                "Denver Nuggets",
                "Miami Heat",
                "Phoenix Suns",
                "Dallas Mavericks",
                "New York Knicks",
                "Philadelphia 76ers",
                "Chicago Bulls",
                "Cleveland Cavaliers",
            ],
        }],
        markets: Markets {
            draw: false,
            halftime: true,
            suspends: false,
            spread: 5.5,
            total: 221.5,
            total_step: 1.0,
        },
    },
    Sport {
        id: "tennis",
        name: "Tennis",
        leagues: &[League {
            id: "atp",
            name: "ATP Tour",
            teams: &[
                "Carlos Alcaraz",
                "Jannik Sinner",
                "Novak Djokovic",
                "Alexander Zverev",
                "Daniil Medvedev",
                "Taylor Fritz",
                "Casper Ruud",
                "Holger Rune",
                "Andrey Rublev",
                "Stefanos Tsitsipas",
                "Alex de Minaur",
                "Grigor Dimitrov",
            ],
        }],
        markets: Markets {
            draw: false,
            halftime: false,
            suspends: true,
            spread: 3.5,
            total: 22.5,
            total_step: 1.0,
        },
    },
    Sport {
        id: "icehockey",
        name: "Ice Hockey",
        leagues: &[League {
            id: "nhl",
            name: "NHL",
            teams: &[
                "Edmonton Oilers",
                "Florida Panthers",
                "Toronto Maple Leafs",
                "Boston Bruins",
                "New York Rangers",
                "Colorado Avalanche",
                "Vegas Golden Knights",
                "Dallas Stars",
                "Tampa Bay Lightning",
                "Carolina Hurricanes",
                "Winnipeg Jets",
                "Vancouver Canucks",
            ],
        }],
        markets: Markets {
            draw: false,
            halftime: false,
            suspends: false,
            spread: 1.5,
            total: 5.5,
            total_step: 0.5,
        },
    },
    Sport {
        id: "american_football",
        name: "American Football",
        leagues: &[League {
            id: "nfl",
            name: "NFL",
            teams: &[
                "Kansas City Chiefs",
                "San Francisco 49ers",
                "Buffalo Bills",
                "Philadelphia Eagles",
                "Dallas Cowboys",
                "Baltimore Ravens",
                "Detroit Lions",
                "Green Bay Packers",
                "Miami Dolphins",
                "Cincinnati Bengals",
                "Pittsburgh Steelers",
                "Seattle Seahawks",
            ],
        }],
        markets: Markets {
            draw: false,
            halftime: false,
            suspends: false,
            spread: 3.5,
            total: 44.5,
            total_step: 1.0,
        },
    },
];

/// Every league, in catalogue order, with its sport.
pub(super) fn leagues() -> impl Iterator<Item = (&'static Sport, &'static League)> {
    SPORTS
        .iter()
        .flat_map(|sport| sport.leagues.iter().map(move |league| (sport, league)))
}

/// The league `league_id` of sport `sport_id`, if the catalogue has it.
pub(super) fn find_league(
    sport_id: &str,
    league_id: &str,
) -> Option<(&'static Sport, &'static League)> {
    leagues().find(|(sport, league)| sport.id == sport_id && league.id == league_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosters_pair_up_and_ids_are_unique() {
        let mut ids: Vec<_> = leagues().map(|(s, l)| (s.id, l.id)).collect();
        for (_, league) in leagues() {
            assert!(
                league.teams.len() >= 2 && league.teams.len() % 2 == 0,
                "{}",
                league.id
            );
        }
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn finds_leagues_only_under_their_sport() {
        assert_eq!(
            find_league("soccer", "epl").map(|(_, l)| l.name),
            Some("Premier League")
        );
        assert!(find_league("basketball", "epl").is_none());
        assert!(find_league("soccer", "mls").is_none());
    }

    #[test]
    fn catalogue_serialises_without_private_fields() {
        let json = serde_json::to_value(CatalogueBody { sports: SPORTS }).unwrap();
        let first = &json["sports"][0];
        assert_eq!(first["sport_id"], "soccer");
        assert_eq!(
            first["leagues"][0],
            serde_json::json!({"league_id": "epl", "name": "Premier League"})
        );
        assert!(first.get("markets").is_none());
    }
}
