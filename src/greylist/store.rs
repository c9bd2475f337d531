//! Where the greylisting state lives: the embedded SQLite file (one node) or Redis (several
//! nodes sharing triplets and the auto-whitelist), chosen by `greylist.store`, behind one
//! interface. Every call has the store timeout; a failure is an [`Error`], which the caller
//! turns into the configured fail-open or fail-closed answer.

use std::time::Duration;

use super::decide::{Outcome, Params};
use super::embedded::Embedded;
pub use super::record::{Entry, Error, Location};
use super::redis::RedisStore;

pub enum Store {
    Embedded(Embedded),
    Redis(Box<RedisStore>),
}

impl Store {
    /// Opens (creating) the embedded file, or prepares the Redis client (which connects at
    /// the first request, so postsift starts while Redis is down and fails open meanwhile).
    pub fn open(location: &Location, timeout: Duration) -> Result<Store, Error> {
        Ok(match location {
            Location::Embedded(p) => Store::Embedded(Embedded::open(p)?),
            Location::Redis(url) => Store::Redis(Box::new(RedisStore::new(url, timeout)?)),
        })
    }

    /// The `store` label: `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    /// Decides one request atomically. `triplet` is the key, `client` the client's address.
    pub async fn check(
        &self,
        p: Params,
        now: i64,
        triplet: &str,
        client: &str,
    ) -> Result<Outcome, Error> {
        match self {
            Store::Embedded(s) => s.check(p, now, triplet.to_owned(), client.to_owned()).await,
            Store::Redis(s) => s.check(p, now, triplet, client).await,
        }
    }

    /// Puts `client` on the auto-whitelist (counted `count` passes).
    pub async fn whitelist(
        &self,
        p: Params,
        client: &str,
        count: u32,
        now: i64,
    ) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.whitelist(client.to_owned(), count, now).await,
            Store::Redis(s) => s.whitelist(client, count, now, p.max_age).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<Entry>, Error> {
        match self {
            Store::Embedded(s) => s.list().await,
            Store::Redis(s) => s.list().await,
        }
    }

    /// Deletes what postgrey's maintenance deletes; (triplets, clients) gone. Redis expires
    /// its keys itself: nothing to do there.
    pub async fn purge(&self, p: Params, now: i64) -> Result<(u64, u64), Error> {
        match self {
            Store::Embedded(s) => s.purge(p, now).await,
            Store::Redis(_) => Ok((0, 0)),
        }
    }

    /// The embedded store's size cap (see [`super::embedded::evict`]); Redis expires its keys
    /// itself and is capped by its own `maxmemory`. Triplets deleted.
    pub async fn evict(&self, max: u64) -> Result<u64, Error> {
        match self {
            Store::Embedded(s) => s.evict(max).await,
            Store::Redis(_) => Ok(0),
        }
    }

    /// (triplets, clients) stored.
    pub async fn count(&self) -> Result<(u64, u64), Error> {
        match self {
            Store::Embedded(s) => s.count().await,
            Store::Redis(s) => s.count().await,
        }
    }
}
