//! The demo's built-in browsing load: a few simulated readers asking the
//! sidecar for what a live-odds site shows, so that changes pass through
//! it and are noticed without anyone typing `curl`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::shutdown::Signal;

/// Pages the readers ask for, besides each game's odds.
const PAGES: &[&str] = &[
    "/api/v1/games",
    "/api/v1/games?sport_id=soccer",
    "/api/v1/sidebar/soccer/epl",
    "/api/v1/sidebar/basketball/nba",
    "/api/v1/sports",
];

/// Asks `sidecar` (`http://host:port`) for a page or a game's odds about
/// `per_second` times a second, until `shutdown`.
pub async fn run(sidecar: String, games: Vec<String>, per_second: u32, mut shutdown: Signal) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut every = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.recv() => return,
        }
        let path = {
            let mut rng = rand::rng();
            match games.choose(&mut rng) {
                Some(game) if rng.random_bool(0.7) => format!("/api/v1/games/{game}/odds"),
                _ => PAGES
                    .choose(&mut rng)
                    .copied()
                    .unwrap_or("/api/v1/games")
                    .to_owned(),
            }
        };
        let Ok(uri) = format!("{sidecar}{path}").parse::<http::Uri>() else {
            return;
        };
        // Read whole, as a browser would; failures are the sidecar's to
        // report, not the load's.
        if let Ok(resp) = client.get(uri).await {
            let _ = resp.into_body().collect().await;
        }
    }
}
