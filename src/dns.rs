//! The DNS resolver behind mail authentication (`[dns]`): hickory's resolver (through
//! mail-auth) pointed at the configured servers, and an in-process cache shared by every session
//! and check, observed for the metrics.
//!
//! Two layers cache, both honouring TTLs. postsift's own [`Cache`] sits in mail-auth's cache
//! hooks and keeps *parsed* answers (an SPF record, a DKIM key already decoded) until the
//! answer's TTL runs out, so a warm message costs neither a query nor a parse; it is bounded by
//! `dns.cache_size` entries and `dns.cache_bytes` bytes per record type (each answer's size
//! estimated from its parsed form), and an answer over `dns.max_record_bytes` is not kept: a
//! sender's zone full of 60 KB key records cannot grow the process. A DKIM key whose size
//! mail-auth does not tell (Ed25519, or RSA bytes that are not a DER key) is not kept either.
//! mail-auth 0.13 hands its hooks positive answers only, so the resolver's own cache (hickory's)
//! is kept below it for negative answers (NXDOMAIN/NODATA for their SOA's negative TTL) — the
//! common "this HELO name has no SPF record" case; it counts answers, not bytes, so it keeps
//! `dns.cache_bytes / 64 KiB` of them (a DNS message is at most 64 KiB). A DNS failure is
//! never cached.
//!
//! What the metrics can see: mail-auth does its queries itself, so lookups are observed at the
//! hooks. A miss in postsift's cache is a lookup handed to the resolver; the answer's arrival
//! (mail-auth stores it) ends it with outcome `answer` and its latency. A lookup that never
//! stores anything got no usable answer — NXDOMAIN, NODATA, SERVFAIL or a timeout, which the
//! hooks cannot tell apart — and is counted `no_answer`, or `timeout` when it lasted
//! `dns.timeout` or longer; its latency runs until the same check's next lookup or its end (the
//! checks of one method run their lookups one after another), so for those it is an upper
//! bound. A `no_answer` may have come from the resolver's negative cache without a query.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::RecordType;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::{MessageAuthenticator, RecordSet, ResolverCache, Txt, MX};
use prometheus::{HistogramVec, IntCounterVec};

use crate::config::Dns as Settings;

/// Record types, as metric labels.
pub const TYPES: &[&str] = &["txt", "mx", "a", "aaaa", "ptr"];
/// How a lookup ended (see the module comment).
pub const OUTCOMES: &[&str] = &["answer", "no_answer", "timeout"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no DNS servers: dns.servers is empty and /etc/resolv.conf gave none ({0})")]
    NoServers(String),
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

/// The metric handles the cache records into.
#[derive(Clone)]
pub struct DnsMetrics {
    /// `postsift_dns_lookups_total{type, outcome}`
    pub lookups: IntCounterVec,
    /// `postsift_dns_lookup_duration_seconds{type}`
    pub duration: HistogramVec,
    /// `postsift_dns_cache_requests_total{type, result}` (hit, miss)
    pub cache: IntCounterVec,
}

impl DnsMetrics {
    pub fn register(r: &prometheus::Registry) -> DnsMetrics {
        use crate::metrics::{counter, histogram_vec};
        DnsMetrics {
            lookups: counter(
                r,
                "postsift_dns_lookups_total",
                "DNS lookups mail authentication handed to the resolver (misses of postsift's cache), by record type and outcome",
                &["type", "outcome"],
                &[TYPES, OUTCOMES],
            ),
            duration: histogram_vec(
                r,
                "postsift_dns_lookup_duration_seconds",
                "Time of one DNS lookup, by record type (for lookups without an answer: an upper bound)",
                "type",
                TYPES,
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            cache: counter(
                r,
                "postsift_dns_cache_requests_total",
                "Requests to postsift's DNS record cache, by record type and result (hit, miss)",
                &["type", "result"],
                &[TYPES, &["hit", "miss"]],
            ),
        }
    }
}

/// The resolver and the cache all sessions share.
pub struct Resolver {
    pub authenticator: MessageAuthenticator,
    pub cache: Cache,
    timeout: Duration,
    /// The resolver's health (one endpoint: the configured servers together; hickory itself
    /// moves between them), fed by lookups that got an answer or timed out.
    health: crate::peers::Group,
    /// Asks `health.dns_probe_name` for the probe: no cache, one attempt.
    probe: TokioResolver,
    probe_name: String,
}

impl Resolver {
    pub fn new(settings: &Settings, health: &crate::config::Health) -> Result<Resolver, Error> {
        let servers: Vec<NameServerConfig> = if settings.servers.is_empty() {
            let (system, _) = mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| Error::NoServers(e.to_string()))?;
            system.name_servers
        } else {
            settings.server_addrs().iter().map(name_server).collect()
        };
        if servers.is_empty() {
            return Err(Error::NoServers("none configured".into()));
        }
        let mut config = ResolverConfig::default();
        config.name_servers = servers;
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(settings.timeout);
        opts.attempts = settings.attempts;
        opts.cache_size = hickory_entries(settings) as u64;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are always absolute; never try them under a search domain.
        opts.ndots = 0;
        let mut probe_opts = opts.clone();
        probe_opts.cache_size = 0;
        probe_opts.attempts = 1;
        probe_opts.timeout = Duration::from_secs(health.probe_timeout);
        let probe =
            TokioResolver::builder_with_config(config.clone(), TokioRuntimeProvider::default())
                .with_options(probe_opts)
                .build()
                .map_err(|e| Error::Build(e.to_string()))?;
        let name = match settings.servers.is_empty() {
            true => "system resolver".to_string(),
            false => settings.servers.join(" "),
        };
        let authenticator =
            MessageAuthenticator::new(config, opts).map_err(|e| Error::Build(e.to_string()))?;
        Ok(Resolver {
            authenticator,
            cache: Cache::with_bytes(
                settings.cache_size,
                settings.cache_bytes,
                settings.max_record_bytes,
            ),
            timeout: Duration::from_secs(settings.timeout),
            health: crate::peers::Group::new(crate::peers::Peer::Dns, &[name], health.down_after),
            probe,
            probe_name: health.dns_probe_name.clone(),
        })
    }

    /// The resolver's health.
    pub fn health(&self) -> &crate::peers::Group {
        &self.health
    }

    /// Whether lookups may go to the resolver now; false (counted as skipped) while it is
    /// marked down, and every method that needs a query is then `temperror` at once.
    pub fn admit(&self) -> bool {
        let ok = self.health.admit_all(0);
        if !ok {
            self.health.skipped();
        }
        ok
    }

    /// Asks the resolver for the probe name (its SOA record, past every cache): true on any
    /// answer, NXDOMAIN and SERVFAIL included; false on a timeout or no connection.
    pub async fn probe(&self, limit: Duration) -> bool {
        let ask = self.probe.lookup(self.probe_name.as_str(), RecordType::SOA);
        match tokio::time::timeout(limit, ask).await {
            Ok(Ok(_)) => true,
            Ok(Err(NetError::Dns(_))) => true,
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// A view of the cache for one method's check of one message, recording into `metrics`.
    pub fn lookups<'a>(&'a self, metrics: &'a DnsMetrics) -> Lookups<'a> {
        let tracker = Tracker {
            pending: Mutex::new(Vec::new()),
            metrics,
            timeout: self.timeout,
            health: Some(&self.health),
        };
        Lookups {
            cache: &self.cache,
            tracker,
        }
    }
}

/// The resolver's own cache counts answers, not bytes, and a DNS message can be 64 KiB: it
/// keeps `dns.cache_bytes / 64 KiB` of them (at least 16, at most `dns.cache_size`).
fn hickory_entries(settings: &Settings) -> usize {
    (settings.cache_bytes / (64 << 10)).clamp(16, settings.cache_size.max(16))
}

/// UDP, then TCP for truncated answers, on `addr`'s port.
fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let conn = |protocol| {
        let mut c = ConnectionConfig::new(protocol);
        c.port = addr.port();
        c
    };
    NameServerConfig::new(
        addr.ip(),
        true,
        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
    )
}

/// The bytes a cached answer takes, estimated from its parsed form (heap included, roughly);
/// None when it cannot be told, and then the answer is not kept.
pub trait Weigh {
    fn weight(&self) -> Option<usize>;
}

/// Per entry: the map's own slot, the expiry, the Arc and the record set around a value.
const ENTRY_OVERHEAD: usize = 96;

impl Weigh for Box<str> {
    fn weight(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl Weigh for IpAddr {
    fn weight(&self) -> Option<usize> {
        Some(0)
    }
}

impl Weigh for RecordSet<Ipv4Addr> {
    fn weight(&self) -> Option<usize> {
        Some(self.rrset.len() * 4)
    }
}

impl Weigh for RecordSet<Ipv6Addr> {
    fn weight(&self) -> Option<usize> {
        Some(self.rrset.len() * 16)
    }
}

impl Weigh for RecordSet<Box<str>> {
    fn weight(&self) -> Option<usize> {
        Some(self.rrset.iter().map(|n| n.len() + 16).sum())
    }
}

impl Weigh for RecordSet<MX> {
    fn weight(&self) -> Option<usize> {
        Some(
            self.rrset
                .iter()
                .flat_map(|mx| mx.exchanges.iter())
                .map(|n| n.len() + 16)
                .sum::<usize>()
                + self.rrset.len() * 24,
        )
    }
}

impl Weigh for Txt {
    fn weight(&self) -> Option<usize> {
        match self {
            // A directive holds at most a domain-spec macro (a name, up to 255 bytes).
            Txt::Spf(spf) => Some(
                std::mem::size_of::<mail_auth::spf::Spf>()
                    + spf.directives.len()
                        * (std::mem::size_of::<mail_auth::spf::Directive>() + 64),
            ),
            Txt::Dmarc(d) => Some(256 + (d.rua.len() + d.ruf.len()) * 320),
            // The key's own bytes: an RSA modulus (its DER adds a few bytes). mail-auth keeps
            // whatever p= decoded to and tells no size for Ed25519 or a malformed key, and
            // ring takes no RSA key over 8192 bits: those are not kept.
            Txt::DomainKey(k) => bits(k).filter(|&b| b > 0 && b <= 16384).map(|b| b / 8 + 64),
            Txt::Error(_) => Some(64),
            _ => Some(512),
        }
    }
}

/// One record type's answers until they expire; at most `capacity` of them and `max_bytes`
/// bytes (estimated, see [`Weigh`]), none over `max_entry` bytes.
pub struct Table<K, V> {
    map: Mutex<Map<K, V>>,
    capacity: usize,
    max_bytes: usize,
    max_entry: usize,
    label: &'static str,
}

/// The entries (value, expiry, weight) and the sum of their weights.
struct Map<K, V> {
    entries: HashMap<K, (V, Instant, usize)>,
    bytes: usize,
}

impl<K: Hash + Eq, V> Map<K, V> {
    fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (v, _, w) = self.entries.remove(key)?;
        self.bytes -= w;
        Some(v)
    }
}

impl<K: Hash + Eq + Weigh, V: Clone + Weigh> Table<K, V> {
    #[cfg(test)]
    fn new(capacity: usize, label: &'static str) -> Self {
        Self::with_bytes(capacity, usize::MAX, usize::MAX, label)
    }

    fn with_bytes(
        capacity: usize,
        max_bytes: usize,
        max_entry: usize,
        label: &'static str,
    ) -> Self {
        Table {
            map: Mutex::new(Map {
                entries: HashMap::new(),
                bytes: 0,
            }),
            capacity,
            max_bytes,
            max_entry,
            label,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map<K, V>> {
        // A panic while holding the lock leaves a map of complete entries: still usable.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let mut map = self.lock();
        match map.entries.get(key) {
            Some((v, until, _)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V, until: Instant) {
        let weight = match (key.weight(), value.weight()) {
            (Some(k), Some(v)) => k + v + ENTRY_OVERHEAD,
            // Size unknown: used by the check that asked, not kept.
            _ => return,
        };
        if weight > self.max_entry || weight > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut map = self.lock();
        map.remove(&key);
        if map.entries.len() >= self.capacity || map.bytes + weight > self.max_bytes {
            let mut freed = 0;
            map.entries.retain(|_, (_, u, w)| {
                let keep = *u > now;
                if !keep {
                    freed += *w;
                }
                keep
            });
            map.bytes -= freed;
        }
        if map.entries.len() >= self.capacity || map.bytes + weight > self.max_bytes {
            // Still full: the entries nearest their expiry go, down to seven eighths of the
            // limits, so that the next inserts do not each pay for a sort.
            let mut by_expiry: Vec<(Instant, usize)> =
                map.entries.values().map(|(_, u, w)| (*u, *w)).collect();
            by_expiry.sort_unstable_by_key(|(u, _)| *u);
            let (cap_n, cap_b) = (
                self.capacity - self.capacity / 8,
                self.max_bytes - self.max_bytes / 8,
            );
            let (mut n, mut b) = (map.entries.len(), map.bytes);
            let mut cut = None;
            for (u, w) in by_expiry {
                if n < cap_n && b + weight <= cap_b {
                    break;
                }
                n -= 1;
                b -= w;
                cut = Some(u);
            }
            if let Some(cut) = cut {
                let mut freed = 0;
                map.entries.retain(|_, (_, u, w)| {
                    let keep = *u > cut;
                    if !keep {
                        freed += *w;
                    }
                    keep
                });
                map.bytes -= freed;
            }
        }
        map.bytes += weight;
        map.entries.insert(key, (value, until, weight));
    }

    /// Entries held (expired ones included until they are next touched).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// postsift's record cache: parsed answers per record type.
pub struct Cache {
    pub txt: Table<Box<str>, Txt>,
    pub mx: Table<Box<str>, RecordSet<MX>>,
    pub ipv4: Table<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: Table<Box<str>, RecordSet<Ipv6Addr>>,
    pub ptr: Table<IpAddr, RecordSet<Box<str>>>,
}

impl Cache {
    /// `capacity` entries per record type, no byte bound (tests).
    pub fn new(capacity: usize) -> Cache {
        Cache::with_bytes(capacity, usize::MAX, usize::MAX)
    }

    /// `capacity` entries and `bytes` bytes per record type; no entry over `max_entry` bytes.
    pub fn with_bytes(capacity: usize, bytes: usize, max_entry: usize) -> Cache {
        Cache {
            txt: Table::with_bytes(capacity, bytes, max_entry, "txt"),
            mx: Table::with_bytes(capacity, bytes, max_entry, "mx"),
            ipv4: Table::with_bytes(capacity, bytes, max_entry, "a"),
            ipv6: Table::with_bytes(capacity, bytes, max_entry, "aaaa"),
            ptr: Table::with_bytes(capacity, bytes, max_entry, "ptr"),
        }
    }

    /// The estimated bytes held, all record types together.
    pub fn bytes(&self) -> usize {
        self.txt.bytes()
            + self.mx.bytes()
            + self.ipv4.bytes()
            + self.ipv6.bytes()
            + self.ptr.bytes()
    }

    /// Whether a live TXT answer for `name` (a fully qualified, lower-case name) is held; not
    /// counted as a cache request.
    pub fn holds_txt(&self, name: &str) -> bool {
        self.txt.get(name).is_some()
    }

    /// The size in bits of the RSA key published at `selector._domainkey.domain` as the cache
    /// holds it (just looked up by the DKIM check); None for an Ed25519 key or when not held.
    pub fn dkim_key_bits(&self, domain: &str, selector: &str) -> Option<usize> {
        let name = format!("{selector}._domainkey.{domain}.").to_ascii_lowercase();
        let map = self.txt.lock();
        match map.entries.get(name.as_str()) {
            Some((Txt::DomainKey(key), _, _)) => bits(key),
            _ => None,
        }
    }
}

fn bits(key: &DomainKey) -> Option<usize> {
    Some(key.p.public_key_bits()).filter(|b| *b != usize::MAX)
}

/// Lookups in flight for one check: started at a cache miss, ended by the answer's insertion,
/// or (no usable answer) by the check's next miss or its end.
struct Tracker<'a> {
    pending: Mutex<Vec<(&'static str, u64, Instant)>>,
    metrics: &'a DnsMetrics,
    timeout: Duration,
    /// Told of answers and timeouts.
    health: Option<&'a crate::peers::Group>,
}

impl Tracker<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, u64, Instant)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hit(&self, label: &'static str) {
        self.metrics.cache.with_label_values(&[label, "hit"]).inc();
    }

    fn miss(&self, label: &'static str, key: u64) {
        self.metrics.cache.with_label_values(&[label, "miss"]).inc();
        let mut pending = self.lock();
        for (l, _, start) in pending.drain(..) {
            self.unanswered(l, start);
        }
        pending.push((label, key, Instant::now()));
    }

    fn answered(&self, label: &'static str, key: u64) {
        let mut pending = self.lock();
        if let Some(i) = pending
            .iter()
            .position(|(l, k, _)| *l == label && *k == key)
        {
            let (_, _, start) = pending.swap_remove(i);
            self.observe(label, "answer", start.elapsed());
            if let Some(h) = self.health {
                h.record(0, crate::peers::Outcome::Answered);
            }
        }
    }

    fn unanswered(&self, label: &'static str, start: Instant) {
        let took = start.elapsed();
        let outcome = if took >= self.timeout {
            if let Some(h) = self.health {
                h.record(0, crate::peers::Outcome::Failed);
            }
            "timeout"
        } else {
            "no_answer"
        };
        self.observe(label, outcome, took);
    }

    fn observe(&self, label: &'static str, outcome: &str, took: Duration) {
        self.metrics
            .lookups
            .with_label_values(&[label, outcome])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        let pending: Vec<_> = self.lock().drain(..).collect();
        for (l, _, start) in pending {
            self.unanswered(l, start);
        }
    }
}

/// The cache as one check sees it: mail-auth's hooks, per record type.
pub struct Lookups<'a> {
    cache: &'a Cache,
    tracker: Tracker<'a>,
}

impl<'a> Lookups<'a> {
    pub fn txt(&self) -> View<'_, Box<str>, Txt> {
        self.view(&self.cache.txt)
    }
    pub fn mx(&self) -> View<'_, Box<str>, RecordSet<MX>> {
        self.view(&self.cache.mx)
    }
    pub fn ipv4(&self) -> View<'_, Box<str>, RecordSet<Ipv4Addr>> {
        self.view(&self.cache.ipv4)
    }
    pub fn ipv6(&self) -> View<'_, Box<str>, RecordSet<Ipv6Addr>> {
        self.view(&self.cache.ipv6)
    }
    pub fn ptr(&self) -> View<'_, IpAddr, RecordSet<Box<str>>> {
        self.view(&self.cache.ptr)
    }

    fn view<'v, K, V>(&'v self, table: &'v Table<K, V>) -> View<'v, K, V> {
        View {
            table,
            tracker: &self.tracker,
        }
    }
}

/// One record type's table as one check sees it.
pub struct View<'a, K, V> {
    table: &'a Table<K, V>,
    tracker: &'a Tracker<'a>,
}

/// The same hash for a key and anything it borrows as (`Borrow`'s contract), so a lookup
/// started with a `&str` is matched by the `Box<str>` stored for it.
fn key_hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl<K: Hash + Eq + Weigh, V: Clone + Weigh> ResolverCache<K, V> for View<'_, K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let v = self.table.get(name);
        match v {
            Some(_) => self.tracker.hit(self.table.label),
            None => self.tracker.miss(self.table.label, key_hash(name)),
        }
        v
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.table.lock().remove(name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.tracker.answered(self.table.label, key_hash(&key));
        self.table.insert(key, value, valid_until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> DnsMetrics {
        DnsMetrics::register(&prometheus::Registry::new())
    }

    fn rs(ip: [u8; 4]) -> RecordSet<Ipv4Addr> {
        RecordSet {
            rrset: vec![Ipv4Addr::from(ip)].into(),
            dnssec_status: Default::default(),
        }
    }

    #[test]
    fn entries_live_until_their_ttl() {
        let t: Table<Box<str>, RecordSet<Ipv4Addr>> = Table::new(10, "a");
        let now = Instant::now();
        t.insert(
            "a.example.".into(),
            rs([192, 0, 2, 1]),
            now + Duration::from_secs(60),
        );
        t.insert("b.example.".into(), rs([192, 0, 2, 2]), now);
        assert!(t.get("a.example.").is_some());
        assert!(t.get("b.example.").is_none(), "expired at once (TTL 0)");
        assert_eq!(t.len(), 1, "an expired entry is dropped when touched");
    }

    #[test]
    fn a_full_table_drops_expired_then_arbitrary_entries() {
        let t: Table<Box<str>, RecordSet<Ipv4Addr>> = Table::new(16, "a");
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..40 {
            t.insert(format!("h{i}.example.").into(), rs([192, 0, 2, 1]), later);
            assert!(t.len() <= 16);
        }
    }

    #[test]
    fn hits_misses_and_answers_are_counted_per_type() {
        let m = metrics();
        let cache = Cache::new(100);
        let lookups = Lookups {
            cache: &cache,
            tracker: Tracker {
                pending: Mutex::new(Vec::new()),
                metrics: &m,
                timeout: Duration::from_secs(5),
                health: None,
            },
        };
        let view = lookups.ipv4();
        assert!(view.get::<str>("a.example.").is_none());
        view.insert(
            "a.example.".into(),
            rs([192, 0, 2, 1]),
            Instant::now() + Duration::from_secs(60),
        );
        assert!(view.get::<str>("a.example.").is_some());
        // A miss never answered: counted when the next lookup starts or the check ends.
        assert!(view.get::<str>("nx.example.").is_none());
        drop(lookups);
        let get = |l: &[&str]| m.cache.with_label_values(l).get();
        assert_eq!((get(&["a", "hit"]), get(&["a", "miss"])), (1, 2));
        let lk = |o: &str| m.lookups.with_label_values(&["a", o]).get();
        assert_eq!((lk("answer"), lk("no_answer"), lk("timeout")), (1, 1, 0));
        assert_eq!(m.duration.with_label_values(&["a"]).get_sample_count(), 2);
    }

    /// A DKIM TXT record whose RSA key has a modulus of `n` bytes (a DER RSAPublicKey).
    fn rsa_key_record(n: usize, seed: u8) -> Txt {
        use base64::Engine as _;
        use mail_auth::common::parse::TxtRecordParser;
        let der_len = |len: usize| -> Vec<u8> {
            if len < 128 {
                vec![len as u8]
            } else {
                let b = (len as u32).to_be_bytes();
                let skip = b.iter().position(|&x| x != 0).unwrap();
                let mut v = vec![0x80 | (4 - skip) as u8];
                v.extend_from_slice(&b[skip..]);
                v
            }
        };
        let mut modulus = vec![0u8]; // positive INTEGER
        modulus.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 0x80));
        let mut body = vec![0x02];
        body.extend(der_len(modulus.len()));
        body.extend(modulus);
        body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30];
        der.extend(der_len(body.len()));
        der.extend(body);
        let p = base64::engine::general_purpose::STANDARD.encode(der);
        let rec = format!("v=DKIM1; k=rsa; p={p}");
        Txt::DomainKey(std::sync::Arc::new(
            DomainKey::parse(rec.as_bytes()).unwrap(),
        ))
    }

    /// Issue 17: 40 messages with 400 distinct 60 KB key records each took RSS from 14 to 531
    /// MB: the cache was bounded by entries only. Now by bytes, and a 60 KB key is not kept.
    #[test]
    fn sixty_kb_key_records_grew_the_dns_cache_without_bound() {
        let cache = Cache::with_bytes(10_000, 256 << 10, 16 << 10);
        let m = metrics();
        let lookups = Lookups {
            cache: &cache,
            tracker: Tracker {
                pending: Mutex::new(Vec::new()),
                metrics: &m,
                timeout: Duration::from_secs(5),
                health: None,
            },
        };
        let later = Instant::now() + Duration::from_secs(3600);
        let view = lookups.txt();
        let big = rsa_key_record(60_000, 1);
        assert!(big.weight().is_none_or(|w| w > 16 << 10));
        for i in 0..400 {
            view.insert(
                format!("s{i}._domainkey.evil.example.").into(),
                big.clone(),
                later,
            );
        }
        assert!(cache.txt.is_empty(), "a 60 KB key is not kept");
        // Ordinary 2048-bit keys: kept, up to the byte bound, the oldest expiry going first.
        for i in 0..4000u32 {
            let until = later + Duration::from_secs(u64::from(i));
            view.insert(
                format!("s{i}._domainkey.example.").into(),
                rsa_key_record(256, i as u8),
                until,
            );
            assert!(cache.bytes() <= 256 << 10, "{}", cache.bytes());
        }
        assert!(cache.txt.len() > 100, "{}", cache.txt.len());
        assert!(view.get::<str>("s3999._domainkey.example.").is_some());
        assert!(view.get::<str>("s0._domainkey.example.").is_none());
        assert_eq!(
            cache.dkim_key_bits("example", "s3999"),
            Some(2048),
            "the newest key is kept whole"
        );
    }

    #[test]
    fn configured_servers_keep_their_port() {
        let ns = name_server(&"127.0.0.1:5353".parse().unwrap());
        assert_eq!(ns.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(ns.connections.iter().all(|c| c.port == 5353));
    }
}
