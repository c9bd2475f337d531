//! The verdict cache: clamd's answer per stream sent (the message, each decoded part) and the
//! spam engine's answer per message, kept for `[cache] ttl` seconds within `[cache] max_bytes`,
//! so that a message Postfix retries after a 4xx, or an attachment a campaign repeats, costs
//! the scanners nothing the second time. Only complete answers are kept (a clean or infected
//! stream, a score): a failure, a timeout or a skipped check never is.
//!
//! A key is a SHA-256 digest of everything the answer depends on, each field length-prefixed so
//! that no two different field lists give the same input: for clamd, its `VERSION` (program and
//! signature database: new signatures make old answers miss), the configured endpoints and the
//! exact bytes of the stream; for the spam engine, the engine, its endpoints and user (spamd)
//! or password (rspamd), the exact bytes it is sent, and for rspamd the envelope it is told.
//! What a key cannot see is bounded by the ttl and by a reload (each runtime has its own
//! cache): a changed clamd.conf, new spamd rules, DNS blocklists answering differently.
//!
//! Eviction is first in, first out: the answers a retry or a campaign needs are the recent
//! ones, and a queue of keys needs no per-lookup bookkeeping.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use super::cache_metrics::{CacheMetrics, Kind};
use super::clamd::{self, ClamdClient, Found, Stream, Verdict};
use super::parts::Contents;
use super::report::SpamResult;

/// A key: the digest of what an answer depends on.
pub type Key = [u8; 32];

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Clamd(Verdict),
    Spam(SpamResult),
}

impl Value {
    fn kind(&self) -> Kind {
        match self {
            Value::Clamd(_) => Kind::Clamd,
            Value::Spam(_) => Kind::Spam,
        }
    }

    /// Bytes it holds, with its key and the map's and the queue's bookkeeping.
    fn weight(&self) -> usize {
        const OVERHEAD: usize = 32 + 32 + 64;
        let strings = |v: &mut dyn Iterator<Item = usize>| v.map(|n| n + 24).sum::<usize>();
        OVERHEAD
            + match self {
                Value::Clamd(Verdict::Clean) => 0,
                Value::Clamd(Verdict::Infected(names)) => {
                    strings(&mut names.iter().map(String::len))
                }
                Value::Spam(r) => {
                    strings(&mut r.rules.iter().map(|(n, _)| n.len() + 8))
                        + r.action.as_ref().map_or(0, String::len)
                        + 64
                }
            }
    }
}

struct Entry {
    value: Value,
    at: Instant,
    weight: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Every key of `map` once, oldest first.
    order: VecDeque<Key>,
    bytes: usize,
}

/// clamd's `VERSION`, asked again after `refresh`.
struct ClamdVersion {
    refresh: Duration,
    memo: Mutex<Option<(String, Instant)>>,
}

/// The verdict cache of one runtime.
pub struct Cache {
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
    version: ClamdVersion,
}

impl Cache {
    /// The cache `[cache]` describes; None when `max_bytes` is 0.
    pub fn new(config: &crate::config::Cache) -> Option<Cache> {
        (config.max_bytes > 0).then(|| Cache {
            max_bytes: usize::try_from(config.max_bytes).unwrap_or(usize::MAX),
            ttl: Duration::from_secs(config.ttl),
            inner: Mutex::default(),
            version: ClamdVersion {
                refresh: Duration::from_secs(config.clamd_version_refresh),
                memo: Mutex::new(None),
            },
        })
    }

    /// The answer stored under `key`, if younger than the ttl.
    pub fn get(&self, kind: Kind, key: &Key, m: &CacheMetrics) -> Option<Value> {
        let inner = self.inner.lock().expect("cache lock");
        let found = inner
            .map
            .get(key)
            .filter(|e| e.at.elapsed() < self.ttl && e.value.kind() == kind)
            .map(|e| e.value.clone());
        drop(inner);
        m.looked_up(kind, found.is_some());
        found
    }

    /// Stores `value` under `key`, dropping the oldest answers to stay within `max_bytes`.
    pub fn put(&self, key: Key, value: Value, m: &CacheMetrics) {
        let weight = value.weight();
        if weight > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        let inner = &mut *inner;
        let entry = Entry {
            value,
            at: Instant::now(),
            weight,
        };
        match inner.map.insert(key, entry) {
            // Replaced: its place in the queue stays.
            Some(old) => inner.bytes -= old.weight,
            None => inner.order.push_back(key),
        }
        inner.bytes += weight;
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.weight;
                if e.at.elapsed() < self.ttl {
                    m.evictions
                        .with_label_values(&[e.value.kind().label()])
                        .inc();
                }
            }
        }
        m.bytes.set(inner.bytes as i64);
    }

    /// clamd's `VERSION` as last heard, asked at first use and again `[cache]
    /// clamd_version_refresh` seconds later (0: every time); None when clamd could not say (the
    /// cache is then not used for the message).
    pub async fn clamd_version(&self, c: &ClamdClient) -> Option<String> {
        let v = &self.version;
        if let Some((version, at)) = &*v.memo.lock().expect("version lock") {
            if !v.refresh.is_zero() && at.elapsed() < v.refresh {
                return Some(version.clone());
            }
        }
        match c.version().await {
            Ok(version) => {
                *v.memo.lock().expect("version lock") = Some((version.clone(), Instant::now()));
                Some(version)
            }
            Err(e) => {
                tracing::warn!(error = %e, "clamd VERSION failed: the verdict cache is not used");
                None
            }
        }
    }

    /// The answer under `key`, if younger than the ttl, without counting a lookup.
    fn peek(&self, key: &Key) -> Option<Verdict> {
        let inner = self.inner.lock().expect("cache lock");
        match inner.map.get(key) {
            Some(Entry {
                value: Value::Clamd(v),
                at,
                ..
            }) if at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        }
    }
}

/// Builds a key: each field length-prefixed, after the cache's name and format.
pub struct KeyBuilder(ring::digest::Context);

impl KeyBuilder {
    pub fn new(kind: Kind) -> KeyBuilder {
        let mut b = KeyBuilder(ring::digest::Context::new(&ring::digest::SHA256));
        b.0.update(b"postsift verdict cache 1\0");
        b.field(kind.label().as_bytes())
    }

    /// One field.
    pub fn field(mut self, data: &[u8]) -> KeyBuilder {
        self.0.update(&(data.len() as u64).to_be_bytes());
        self.0.update(data);
        self
    }

    /// A field that may be absent (None and Some("") differ).
    pub fn optional(self, data: Option<&str>) -> KeyBuilder {
        match data {
            None => self.field(b"\x00"),
            Some(d) => self.field(b"\x01").field(d.as_bytes()),
        }
    }

    /// A field `len` bytes long, its bytes read from `read` (a message, a decoded part).
    fn read_field(mut self, len: u64, mut read: impl std::io::Read) -> std::io::Result<KeyBuilder> {
        self.0.update(&len.to_be_bytes());
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let got = read.read(&mut buf[..want])?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.0.update(&buf[..got]);
            left -= got as u64;
        }
        Ok(self)
    }

    pub fn finish(self) -> Key {
        self.0.finish().as_ref().try_into().expect("SHA-256")
    }
}

/// Streams up to this size are digested on the async thread; larger ones on a blocking one.
const INLINE_DIGEST: u64 = 256 * 1024;

/// `base` followed by a stream's bytes: the message, or a decoded part.
async fn stream_key(
    base: KeyBuilder,
    len: u64,
    read: impl std::io::Read + Send + 'static,
) -> Option<Key> {
    let digest = move || base.read_field(len, read).map(KeyBuilder::finish);
    let r = match len <= INLINE_DIGEST {
        true => digest(),
        false => match tokio::task::spawn_blocking(digest).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
    };
    r.map_err(|e| tracing::warn!(error = %e, "verdict cache: reading a stream to digest it"))
        .ok()
}

/// A decoded part's bytes as an owned reader.
fn part_reader(p: &Contents) -> std::io::Result<impl std::io::Read + Send + 'static> {
    use std::io::{Read, Seek};
    let (head, tail) = p.stream()?;
    let tail: Box<dyn Read + Send> = match tail {
        Some(mut f) => {
            f.seek(std::io::SeekFrom::Start(0))?;
            Box::new(f)
        }
        None => Box::new(std::io::empty()),
    };
    Ok(std::io::Cursor::new(head).chain(tail))
}

/// clamd's answer for the message and `parts` (see `Scanners::virus_scan`), each stream looked
/// up in `cache` first: only the streams it has no answer for are sent, and their answers are
/// kept. The same answer as without the cache: the first infected stream in the order sent
/// (the message, then the parts), so streams before a cached infected one that are not cached
/// are still sent.
///
/// The key has clamd's `VERSION` as last heard (`Cache::clamd_version`): a new signature
/// database makes every answer miss once it is heard, at most `clamd_version_refresh` seconds
/// after clamd loaded it. The cache is never used while clamd is marked down or does not answer
/// `VERSION`: the message then takes clamd's failure path as it would without the cache.
/// Without a cache everything is sent and nothing kept.
pub async fn clamd_scan(
    c: &ClamdClient,
    cache: Option<&Cache>,
    msg: &Stream,
    parts: &[&Contents],
    m: &CacheMetrics,
) -> Result<Option<(Found, Vec<String>)>, clamd::Error> {
    let cache = cache.filter(|_| c.health().usable());
    let version = match cache {
        Some(cache) => cache.clamd_version(c).await.map(|v| (cache, v)),
        None => None,
    };
    let Some((cache, version)) = version else {
        return send(c, Some(msg), parts).await;
    };
    // Each stream's digest (stream 0 is the message, stream i the part i - 1); a stream that
    // cannot be read back has none, and is sent.
    let mut digests = Vec::with_capacity(parts.len() + 1);
    digests.push(stream_key(KeyBuilder::new(Kind::Clamd), msg.len(), msg.reader()).await);
    for p in parts {
        digests.push(match part_reader(p) {
            Ok(r) => stream_key(KeyBuilder::new(Kind::Clamd), p.len(), r).await,
            Err(_) => None,
        });
    }
    let keys: Vec<Option<Key>> = {
        let mut base = KeyBuilder::new(Kind::Clamd).field(version.as_bytes());
        for ep in c.endpoint_names() {
            base = base.field(ep.as_bytes());
        }
        let base = base.field(b"");
        digests
            .iter()
            .map(|d| d.map(|d| KeyBuilder(base.0.clone()).field(&d).finish()))
            .collect()
    };
    let cached: Vec<Option<Verdict>> = keys
        .iter()
        .map(|k| k.as_ref().and_then(|k| cache.peek(k)))
        .collect();
    for (k, v) in keys.iter().zip(&cached) {
        if k.is_some() {
            m.looked_up(Kind::Clamd, v.is_some());
        }
    }
    let first_infected = cached
        .iter()
        .position(|v| matches!(v, Some(Verdict::Infected(_))));
    let found_at = |i: usize| match i {
        0 => Found::Message,
        i => Found::Part(i - 1),
    };
    let cached_answer = first_infected.map(|i| match &cached[i] {
        Some(Verdict::Infected(names)) => (found_at(i), names.clone()),
        _ => unreachable!("an infected answer"),
    });
    let upto = first_infected.unwrap_or(cached.len());
    // A stream whose bytes an earlier one repeats (the MIME walk reads a base64 part both in
    // the MIME tree and as a raw block) is not sent twice: the earlier one's answer is its own,
    // and an infected earlier one is named first anyway.
    let mut seen = std::collections::HashSet::new();
    let to_send: Vec<usize> = (0..upto)
        .filter(|&i| cached[i].is_none() && keys[i].is_none_or(|k| seen.insert(k)))
        .collect();
    if to_send.is_empty() {
        return Ok(cached_answer);
    }
    let with_msg = to_send[0] == 0;
    let sent_parts: Vec<&Contents> = to_send
        .iter()
        .filter(|&&i| i > 0)
        .map(|&i| parts[i - 1])
        .collect();
    let found = send(c, with_msg.then_some(msg), &sent_parts).await?;
    // The stream (its index among all) clamd found infected, if any.
    let infected_at = found.as_ref().map(|(at, _)| match at {
        Found::Message => 0,
        Found::Part(j) => to_send[usize::from(with_msg) + j],
    });
    // Every stream sent before the infected one was answered clean (clamd's session is read
    // until then), and the infected one was answered.
    for &i in &to_send {
        let Some(key) = keys[i] else { continue };
        match (infected_at, &found) {
            (Some(at), Some((_, names))) if at == i => {
                cache.put(key, Value::Clamd(Verdict::Infected(names.clone())), m);
                break;
            }
            _ => cache.put(key, Value::Clamd(Verdict::Clean), m),
        }
    }
    Ok(match (infected_at, found) {
        (Some(at), Some((_, names))) => Some((found_at(at), names)),
        _ => cached_answer,
    })
}

/// The message (when given) and `parts` to clamd: one INSTREAM for a message alone, a session
/// otherwise.
async fn send(
    c: &ClamdClient,
    msg: Option<&Stream>,
    parts: &[&Contents],
) -> Result<Option<(Found, Vec<String>)>, clamd::Error> {
    match (msg, parts.is_empty()) {
        (Some(msg), true) => c.scan_stream(msg).await.map(|v| match v {
            Verdict::Clean => None,
            Verdict::Infected(names) => Some((Found::Message, names)),
        }),
        (msg, _) => c.scan_streams(msg, parts).await,
    }
}

/// The spam engine's key for one message: the engine, its identity and the exact bytes it is
/// sent; for rspamd also the envelope it is told (its rules see it).
pub fn spam_key(engine: &super::SpamEngine, sent: &[u8], env: &super::ScanEnvelope) -> Key {
    let mut b = KeyBuilder::new(Kind::Spam).field(engine.name().as_bytes());
    for part in engine.identity() {
        b = b.field(part.as_bytes());
    }
    b = b.field(b"");
    if let super::SpamEngine::Rspamd(_) = engine {
        b = b
            .optional(env.ip.as_deref())
            .optional(env.helo.as_deref())
            .optional(env.hostname.as_deref())
            .field(env.from.as_bytes())
            .optional(env.queue_id.as_deref());
        for r in &env.rcpts {
            b = b.field(r.as_bytes());
        }
        b = b.field(b"");
    }
    b.field(sent).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn cache(max_bytes: u64, ttl: u64) -> Cache {
        Cache::new(&crate::config::Cache {
            max_bytes,
            ttl,
            clamd_version_refresh: 10,
        })
        .unwrap()
    }

    fn key(n: u8) -> Key {
        KeyBuilder::new(Kind::Clamd).field(&[n]).finish()
    }

    #[test]
    fn a_stored_answer_is_found_under_its_key_only() {
        let m = CacheMetrics::register(&Registry::new());
        let c = cache(1 << 20, 60);
        c.put(key(1), Value::Clamd(Verdict::Clean), &m);
        assert_eq!(
            c.get(Kind::Clamd, &key(1), &m),
            Some(Value::Clamd(Verdict::Clean))
        );
        assert_eq!(c.get(Kind::Clamd, &key(2), &m), None);
        // A key of one cache never answers for the other.
        assert_eq!(c.get(Kind::Spam, &key(1), &m), None);
        assert_eq!(m.lookups.with_label_values(&["clamd", "hit"]).get(), 1);
        assert_eq!(m.lookups.with_label_values(&["clamd", "miss"]).get(), 1);
    }

    #[test]
    fn the_oldest_answers_go_first_to_stay_within_max_bytes() {
        let m = CacheMetrics::register(&Registry::new());
        let one = Value::Clamd(Verdict::Clean).weight() as u64;
        let c = cache(3 * one, 60);
        for n in 0..5 {
            c.put(key(n), Value::Clamd(Verdict::Clean), &m);
        }
        assert_eq!(c.get(Kind::Clamd, &key(0), &m), None);
        assert_eq!(c.get(Kind::Clamd, &key(1), &m), None);
        assert!(c.get(Kind::Clamd, &key(4), &m).is_some());
        assert_eq!(m.evictions.with_label_values(&["clamd"]).get(), 2);
        assert_eq!(m.bytes.get() as u64, 3 * one);
    }

    #[test]
    fn an_answer_older_than_the_ttl_is_a_miss() {
        let m = CacheMetrics::register(&Registry::new());
        let c = cache(1 << 20, 60);
        c.put(key(1), Value::Clamd(Verdict::Clean), &m);
        c.inner.lock().unwrap().map.get_mut(&key(1)).unwrap().at -= Duration::from_secs(61);
        assert_eq!(c.get(Kind::Clamd, &key(1), &m), None);
    }

    #[test]
    fn keys_differ_when_fields_are_cut_differently() {
        let a = KeyBuilder::new(Kind::Clamd)
            .field(b"ab")
            .field(b"c")
            .finish();
        let b = KeyBuilder::new(Kind::Clamd)
            .field(b"a")
            .field(b"bc")
            .finish();
        let c = KeyBuilder::new(Kind::Spam)
            .field(b"ab")
            .field(b"c")
            .finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
        let none = KeyBuilder::new(Kind::Spam).optional(None).finish();
        let empty = KeyBuilder::new(Kind::Spam).optional(Some("")).finish();
        assert_ne!(none, empty);
    }

    fn spamd(endpoint: &str, user: Option<&str>) -> crate::scan::SpamEngine {
        let t = Duration::from_secs(1);
        crate::scan::SpamEngine::Spamd(crate::scan::spamd::SpamdClient::new(
            vec![endpoint.into()],
            t,
            t,
            user.map(Into::into),
        ))
    }

    fn rspamd(endpoint: &str) -> crate::scan::SpamEngine {
        let t = Duration::from_secs(1);
        crate::scan::SpamEngine::Rspamd(crate::scan::rspamd::RspamdClient::new(
            vec![endpoint.into()],
            t,
            t,
            None,
        ))
    }

    fn envelope(ip: &str, from: &str, rcpts: &[&str]) -> crate::scan::ScanEnvelope {
        crate::scan::ScanEnvelope {
            ip: Some(ip.into()),
            helo: Some("mx.example.org".into()),
            hostname: None,
            from: from.into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            queue_id: Some("4ABC".into()),
            client: Default::default(),
        }
    }

    /// What a spam score depends on is in its key: the bytes, the engine, its endpoints and
    /// user, and for rspamd (whose rules see it) the envelope. The same message from another
    /// client must not reuse a score rspamd gave for the first.
    #[test]
    fn the_spam_key_covers_everything_the_score_depends_on() {
        let env = envelope("192.0.2.1", "a@example.org", &["b@example.com"]);
        let msg = b"Subject: x\r\n\r\nhi\r\n";
        let k = spam_key;
        let base = k(&spamd("127.0.0.1:783", None), msg, &env);
        assert_eq!(base, k(&spamd("127.0.0.1:783", None), msg, &env));
        assert_ne!(
            base,
            k(
                &spamd("127.0.0.1:783", None),
                b"Subject: y\r\n\r\nhi\r\n",
                &env
            )
        );
        assert_ne!(base, k(&spamd("127.0.0.1:784", None), msg, &env));
        assert_ne!(base, k(&spamd("127.0.0.1:783", Some("bob")), msg, &env));
        assert_ne!(base, k(&rspamd("127.0.0.1:783"), msg, &env));
        // spamd is told nothing of the envelope: the same bytes are the same question.
        let other = envelope("198.51.100.7", "c@example.net", &["d@example.com"]);
        assert_eq!(base, k(&spamd("127.0.0.1:783", None), msg, &other));
        // rspamd is: each field counts.
        let r = rspamd("127.0.0.1:11333");
        let rbase = k(&r, msg, &env);
        for changed in [
            envelope("198.51.100.7", "a@example.org", &["b@example.com"]),
            envelope("192.0.2.1", "c@example.net", &["b@example.com"]),
            envelope(
                "192.0.2.1",
                "a@example.org",
                &["b@example.com", "e@example.com"],
            ),
            crate::scan::ScanEnvelope {
                helo: Some("other".into()),
                ..env.clone()
            },
            crate::scan::ScanEnvelope {
                hostname: Some("mx.example.org".into()),
                ..env.clone()
            },
            crate::scan::ScanEnvelope {
                queue_id: None,
                ..env.clone()
            },
        ] {
            assert_ne!(rbase, k(&r, msg, &changed), "{changed:?}");
        }
    }

    #[test]
    fn a_stream_digest_is_the_digest_of_its_bytes() {
        let base = || KeyBuilder::new(Kind::Clamd).field(b"v");
        let read = base().read_field(3, &b"abc"[..]).unwrap().finish();
        assert_eq!(read, base().field(b"abc").finish());
        assert!(base().read_field(4, &b"abc"[..]).is_err());
    }
}
