//! The Redis store, shared by several postsift nodes. Keys: `postsift:greylist:t:<triplet>` →
//! `"first,last"` and `postsift:greylist:c:<client ip>` → `"count,last"`, each with a TTL
//! (`max_age`, or `retry_window` for a triplet that has not passed yet), so Redis purges them.
//! A whole decision (auto-whitelist lookup, triplet read, update, auto-whitelist count) is one
//! Lua script, which Redis runs atomically: two nodes deciding on the same triplet or client
//! at once cannot lose an update. The script mirrors [`super::decide::decide`]; the
//! integration tests run the same request sequence through both stores.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};
use tokio::sync::Mutex;

use super::decide::{Outcome, Params};
use super::record::{Entry, Error};

pub const PREFIX: &str = "postsift:greylist:";

const DECIDE: &str = r#"
local now, delay, max_age, retry, awl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function pair(v)
  if not v then return nil end
  local a, b = string.match(v, '^(%-?%d+),(%-?%d+)$')
  if not a then return nil end
  return tonumber(a), tonumber(b)
end
local ccount, clast
if awl > 0 then
  ccount, clast = pair(redis.call('GET', KEYS[2]))
  if ccount and now - clast > max_age then ccount = nil end
  if ccount and ccount >= awl then
    if now >= clast + 3600 or clast > now then
      redis.call('SET', KEYS[2], string.format('%d,%d', ccount + 1, now), 'EX', max_age + 1)
    end
    return {0, 0}
  end
end
local first, last = pair(redis.call('GET', KEYS[1]))
if first and (now - last > max_age or (last - first < delay and now - last > retry)) then first = nil end
local passed = false
if first then
  passed = (last - first >= delay)
  if not passed and now - first > retry then first = now end
  if first > now then first = now end
else
  first = now
end
local remaining = delay - (now - first)
local ttl = retry + 1
if now - first >= delay then ttl = max_age + 1 end
redis.call('SET', KEYS[1], string.format('%d,%d', first, now), 'EX', ttl)
if awl > 0 and remaining <= 0 and not passed then
  if not ccount or now >= clast + 3600 then
    redis.call('SET', KEYS[2], string.format('%d,%d', (ccount or 0) + 1, now), 'EX', max_age + 1)
  end
end
if remaining > 0 then
  if now ~= first then return {2, remaining} end
  return {1, remaining}
end
if not passed then return {3, now - first} end
return {4, 0}
"#;

pub struct RedisStore {
    client: redis::Client,
    /// The connection in use; dropped after an error so the next call connects again.
    conn: Mutex<Option<MultiplexedConnection>>,
    decide: Script,
    timeout: Duration,
}

fn err(e: redis::RedisError) -> Error {
    Error::Redis(e.to_string())
}

fn parse_pair(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once(',')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url).map_err(err)?;
        Ok(RedisStore {
            client,
            conn: Mutex::new(None),
            decide: Script::new(DECIDE),
            timeout,
        })
    }

    async fn conn(&self) -> Result<MultiplexedConnection, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(err)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on a connection under the store timeout; forgets the connection on failure.
    async fn with<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await?;
        let r = match tokio::time::timeout(self.timeout, f(c)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => err(e),
            Err(_) => Error::Timeout,
        };
        *self.conn.lock().await = None;
        Err(r)
    }

    pub async fn check(
        &self,
        p: Params,
        now: i64,
        triplet: &str,
        client: &str,
    ) -> Result<Outcome, Error> {
        let (code, n): (i64, i64) = self
            .with(|mut c| async move {
                self.decide
                    .key(format!("{PREFIX}t:{triplet}"))
                    .key(format!("{PREFIX}c:{client}"))
                    .arg(now)
                    .arg(p.delay)
                    .arg(p.max_age)
                    .arg(p.retry_window)
                    .arg(p.awl_clients)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match code {
            0 => Outcome::AutoWhitelisted,
            1 => Outcome::New { remaining: n },
            2 => Outcome::Early { remaining: n },
            3 => Outcome::Passed { delayed: Some(n) },
            _ => Outcome::Passed { delayed: None },
        })
    }

    pub async fn whitelist(
        &self,
        client: &str,
        count: u32,
        now: i64,
        max_age: i64,
    ) -> Result<(), Error> {
        let key = format!("{PREFIX}c:{client}");
        self.with(|mut c| async move {
            c.set_ex::<_, _, ()>(key, format!("{count},{now}"), max_age as u64 + 1)
                .await
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<String>, Error> {
        self.with(|mut c| async move {
            let mut it = c.scan_match::<_, String>(format!("{PREFIX}*")).await?;
            let mut keys = Vec::new();
            while let Some(k) = futures_next(&mut it).await {
                keys.push(k);
            }
            Ok(keys)
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<Entry>, Error> {
        let mut keys = self.keys().await?;
        keys.sort();
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = self
                .with(|mut c| async move { c.mget(chunk).await })
                .await?;
            for (k, v) in chunk.iter().zip(values) {
                let Some((a, b)) = v.as_deref().and_then(parse_pair) else {
                    continue;
                };
                let rest = &k[PREFIX.len()..];
                if let Some(key) = rest.strip_prefix("t:") {
                    out.push(Entry::Triplet {
                        key: key.to_owned(),
                        first: a,
                        last: b,
                    });
                } else if let Some(ip) = rest.strip_prefix("c:") {
                    out.push(Entry::Client {
                        ip: ip.to_owned(),
                        count: a.try_into().unwrap_or(0),
                        last: b,
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn count(&self) -> Result<(u64, u64), Error> {
        let keys = self.keys().await?;
        let t = keys
            .iter()
            .filter(|k| k[PREFIX.len()..].starts_with("t:"))
            .count() as u64;
        Ok((t, keys.len() as u64 - t))
    }
}

/// `AsyncIter::next_item` without pulling in the futures crate.
async fn futures_next(it: &mut redis::AsyncIter<'_, String>) -> Option<String> {
    it.next_item().await.and_then(Result::ok)
}
