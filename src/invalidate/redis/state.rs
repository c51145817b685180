//! The fleet's game states, `{prefix}game:{id}`: read in one round trip,
//! and changed only by compare-and-set, so each transition is decided once
//! for the fleet.

use super::{RedisError, RedisTier};
use crate::invalidate::known::Known;
use crate::watch::GameId;

/// Compare-and-set on `{prefix}game:{id}`: one key, so one slot in a
/// cluster. A missing or unreadable value is replaced, and says so (2), so
/// the writer tells the fleet that the state was seeded, not changed.
pub(super) const CAS_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {1, ''}
end
if cur == false or not pcall(cjson.decode, cur) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {2, ''}
end
return {0, cur}
";

/// How a compare-and-set ended.
#[derive(Debug, PartialEq)]
pub enum Cas {
    Set,
    /// Set where Redis held no readable state: the key had expired, was
    /// lost, or was corrupt. Peers that knew a state must hear of it.
    Seeded,
    /// Another replica changed it first; this is the state now.
    Current(Known),
}

impl RedisTier {
    /// The fleet's known state of each game, in one round trip.
    pub async fn load_states(&self, ids: &[&GameId]) -> Result<Vec<Option<Known>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("GET").arg(self.game_key(id));
        }
        let raw: Vec<Option<String>> = self.query(&pipe).await?;
        // A corrupt value is treated as unknown, not as an error for all.
        Ok(raw
            .into_iter()
            .map(|r| r.and_then(|s| serde_json::from_str(&s).ok()))
            .collect())
    }

    /// Atomically replaces the game's state if it is still `expected`.
    ///
    /// A transition (`expected` known) is tried even while Redis looks
    /// unhealthy, like the deletion and the publish that follow it: one
    /// decided locally leaves the fleet's state behind, and the next CAS
    /// against that old state would judge a real change to be none. Seeding
    /// a first sighting (`expected` = `None`) fails at once instead: it
    /// runs on fills, which a dead Redis must not slow down.
    pub async fn compare_and_set(
        &self,
        id: &GameId,
        expected: Option<&Known>,
        new: &Known,
    ) -> Result<Cas, RedisError> {
        let mut conn = if expected.is_some() {
            self.manager().ok_or(RedisError::NotConnected)?
        } else {
            self.connection()?
        };
        let expected = expected.map(encode_state).unwrap_or_default();
        let mut invocation = self.cas.key(self.game_key(id));
        invocation
            .arg(expected)
            .arg(encode_state(new))
            .arg(self.registry_ttl);
        let result = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, String)>(&mut conn),
        )
        .await
        {
            Err(_) => Err(RedisError::Timeout(self.timeout)),
            Ok(r) => r.map_err(RedisError::from),
        };
        let (set, current) = result.inspect_err(|e| self.failed(e))?;
        match set {
            1 => return Ok(Cas::Set),
            2 => return Ok(Cas::Seeded),
            _ => {}
        }
        serde_json::from_str(&current)
            .map(Cas::Current)
            .map_err(|e| RedisError::Decode(e.to_string()))
    }
}

fn encode_state(s: &Known) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
