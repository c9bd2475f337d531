//! The TOML configuration: its schema (serde, unknown keys rejected), the documented default of
//! every field, and the load → parse → validate sequence that runs before anything binds a socket.
//! `postsift.example.toml` at the top of the repository mirrors this file, key for key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Where `postsift run` looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/postsift/postsift.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    /// Like `Invalid`, for a key inside an array of tables (`dkim_sign.keys[1].key`).
    #[error("{path}: invalid value for `{key}`: {message}")]
    InvalidAt {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub reinject: Reinject,
    pub clamd: Clamd,
    pub spamd: Spamd,
    pub rspamd: Rspamd,
    pub virus: Virus,
    pub spam: Spam,
    pub headers: Headers,
    pub parts: Parts,
    pub banned: Banned,
    pub metrics: Metrics,
    pub health: Health,
    pub log: Log,
    pub greylist: Greylist,
    pub quarantine: Quarantine,
    pub dns: Dns,
    pub auth: Auth,
    pub dkim_sign: DkimSign,
    /// `[[policy]]`: policy banks, applied in order on top of the settings above (see
    /// [`crate::banks`]). Default: none.
    pub policy: Vec<Bank>,
    /// The keys written in the file, section by section (`"rspamd"` → `{"endpoints", …}`); empty
    /// for the built-in defaults. Serde fills every absent key with its default, so this is the
    /// only record of what the administrator actually configured: the spam-engine check and
    /// [`Config::warnings`] need it to tell a section left out from one written and then unused.
    #[serde(skip)]
    present: BTreeMap<String, BTreeSet<String>>,
}

/// `[server]`: the inbound SMTP/LMTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Addresses to listen on. Default `["127.0.0.1:10024"]`.
    pub listen: Vec<SocketAddr>,
    /// Clients allowed to connect; others get `554 5.7.1` and are closed.
    /// Default `["127.0.0.0/8", "::1/128"]`.
    pub allow_networks: Vec<IpNet>,
    /// Name in the greeting and the Received line. Default: the system's FQDN.
    pub hostname: Option<String>,
    /// Concurrent sessions; more are answered `421 4.3.2` and closed. Default 64.
    pub max_sessions: usize,
    /// Largest message accepted, in bytes; larger → `552 5.3.4`. Default 52428800 (50 MiB).
    pub max_message_size: u64,
    /// Recipients per message; more → `452 4.5.3`. Default 1000.
    pub max_recipients: usize,
    /// Bytes of a message held in memory; the rest spools to a temp file. Default 262144.
    pub spool_threshold: usize,
    /// Largest header section, in bytes, held (whole, in memory) and checked for forged
    /// headers; a message with a larger one is refused with `552 5.3.4`. Default 1048576.
    pub max_header_size: usize,
    /// Bytes of message data all messages being received or processed together may hold in
    /// memory (each takes `spool_threshold`, more for a larger header section); past it, new
    /// messages get `452 4.3.1` instead of the process growing. Default 134217728 (128 MiB).
    pub max_memory: usize,
    /// Spool files all messages together may have open; past it, `452 4.3.1`. Default 512.
    pub max_spool_files: usize,
    /// Directory for spooled messages. Default: `$TMPDIR` or `/tmp`.
    pub spool_dir: Option<PathBuf>,
    /// Seconds a whole command may take, counted from when postsift starts waiting for it
    /// (a client that sends a byte at a time gets no more), and the base time for a DATA
    /// body. Default 300.
    pub read_timeout: u64,
    /// Bytes per second a DATA body must average: the body's deadline is `read_timeout` plus
    /// one second per `min_data_rate` bytes received, so a stuck or dribbling client frees its
    /// slot (`421 4.4.2`). 0 switches the rate off (then `read_timeout` limits each read).
    /// Default 8192 (the only client is the local Postfix; its smtpd's own default for
    /// Internet clients is 500).
    pub min_data_rate: u64,
    /// Commands that move no mail forward (NOOP, RSET, HELP, VRFY, EXPN, HELO/EHLO/LHLO, RCPT
    /// beyond `max_recipients`) between two messages before `421 4.7.0`, like Postfix's
    /// `smtpd_junk_command_limit`. Default 100.
    pub max_junk_commands: u32,
    /// Seconds a write to the client may take. Default 300.
    pub write_timeout: u64,
    /// Protocol errors in one session before `421` and close. Default 20.
    pub max_errors: u32,
    /// Seconds messages in flight get to finish on SIGTERM. Default 120.
    pub shutdown_grace: u64,
    /// File `postsift run` writes its pid to at start (and removes at exit), for
    /// `postsift reload`. Default: none (no pid file).
    pub pid_file: Option<PathBuf>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec!["127.0.0.1:10024".parse().unwrap()],
            allow_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            hostname: None,
            max_sessions: 64,
            max_message_size: 52_428_800,
            max_recipients: 1000,
            spool_threshold: 262_144,
            max_header_size: 1_048_576,
            max_memory: 134_217_728,
            max_spool_files: 512,
            spool_dir: None,
            read_timeout: 300,
            min_data_rate: 8192,
            max_junk_commands: 100,
            write_timeout: 300,
            max_errors: 20,
            shutdown_grace: 120,
            pid_file: None,
        }
    }
}

/// `[reinject]`: where scanned mail goes back into Postfix.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reinject {
    /// The reinjection smtpd, `host:port`. Default `"127.0.0.1:10025"`.
    pub to: String,
    /// Seconds to connect. Default 30.
    pub connect_timeout: u64,
    /// Seconds for each command's reply. Default 300.
    pub command_timeout: u64,
    /// Seconds for the reply to the final dot. Default 600.
    pub data_timeout: u64,
    /// Idle connections kept open for reuse. Default 16.
    pub max_idle: usize,
    /// Name sent in EHLO. Default: `server.hostname`.
    pub helo: Option<String>,
}

impl Default for Reinject {
    fn default() -> Self {
        Reinject {
            to: "127.0.0.1:10025".into(),
            connect_timeout: 30,
            command_timeout: 300,
            data_timeout: 600,
            max_idle: 16,
            helo: None,
        }
    }
}

/// What to do when a scanner fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// `451 4.5.0`: Postfix keeps the message and retries.
    Tempfail,
    /// Deliver anyway (for clamd: marked `***UNCHECKED***`).
    Pass,
}

/// `[clamd]`: ClamAV's daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clamd {
    /// Unix socket paths or `host:port`, tried in order. Empty: no virus scanning.
    /// Default `["/run/clamav/clamd.ctl"]`.
    pub endpoints: Vec<String>,
    /// Default `"tempfail"`.
    pub on_failure: OnFailure,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for the whole scan (send and verdict). Default 120.
    pub timeout: u64,
}

impl Default for Clamd {
    fn default() -> Self {
        Clamd {
            endpoints: vec!["/run/clamav/clamd.ctl".into()],
            on_failure: OnFailure::Tempfail,
            connect_timeout: 10,
            timeout: 120,
        }
    }
}

/// `[spamd]`: SpamAssassin's daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spamd {
    /// `host:port` or Unix socket paths, tried in order. Empty: no spam scanning.
    /// Default `["127.0.0.1:783"]`.
    pub endpoints: Vec<String>,
    /// Bytes sent to spamd at most; longer messages are truncated at a line end, as amavis
    /// does. Default 524288.
    pub max_size: usize,
    /// Default `"pass"`.
    pub on_failure: OnFailure,
    /// `User:` sent to spamd. Default: none.
    pub user: Option<String>,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for each read or write. Default 60.
    pub io_timeout: u64,
    /// Seconds for the whole scan. Default 120.
    pub timeout: u64,
}

impl Default for Spamd {
    fn default() -> Self {
        Spamd {
            endpoints: vec!["127.0.0.1:783".into()],
            max_size: 524_288,
            on_failure: OnFailure::Pass,
            user: None,
            connect_timeout: 10,
            io_timeout: 60,
            timeout: 120,
        }
    }
}

/// `[rspamd]`: rspamd's normal worker (or controller, with a password), used when
/// `spam.engine = "rspamd"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rspamd {
    /// `host:port`, tried in order. Empty: no spam scanning. Default `["127.0.0.1:11333"]`.
    pub endpoints: Vec<String>,
    /// Bytes sent at most (cut at a line end). Default 524288.
    pub max_size: usize,
    /// Default `"pass"`.
    pub on_failure: OnFailure,
    /// Sent as the `Password` header (controller-protected setups). Default: none.
    pub password: Option<String>,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for the whole scan. Default 60.
    pub timeout: u64,
    /// Follow rspamd's `action` instead of comparing its score with the `[spam]` levels:
    /// reject → spam (kill level), rewrite subject / add header → flagged (tag2), greylist /
    /// soft reject → `greylist_action`, no action → clean. Default false.
    pub use_action: bool,
    /// With `use_action`: `"pass"` (default) or `"tempfail"` (451 4.7.1) for rspamd's greylist
    /// and soft reject.
    pub greylist_action: OnFailure,
}

impl Default for Rspamd {
    fn default() -> Self {
        Rspamd {
            endpoints: vec!["127.0.0.1:11333".into()],
            max_size: 524_288,
            on_failure: OnFailure::Pass,
            password: None,
            connect_timeout: 10,
            timeout: 60,
            use_action: false,
            greylist_action: OnFailure::Pass,
        }
    }
}

/// Which spam engine scores messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpamEngine {
    Spamd,
    Rspamd,
}

/// The action for a content category ("destiny" in amavis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deliver (tagged).
    Pass,
    /// Accept with 250 and drop.
    Discard,
    /// Answer 554 5.7.0; Postfix bounces to the sender.
    Reject,
    /// Store in `[quarantine] dir`, then answer `250 2.7.0 Ok, quarantined` (451 if it
    /// cannot be stored).
    Quarantine,
}

/// `[virus]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Virus {
    /// `"discard"` (default), `"reject"`, `"quarantine"` or `"pass"` (then `X-Amavis-Alert`
    /// is added).
    pub action: Action,
}

impl Default for Virus {
    fn default() -> Self {
        Virus {
            action: Action::Discard,
        }
    }
}

/// `[spam]`: SpamAssassin levels, as amavis's `$sa_tag_level_deflt` and friends.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spam {
    /// `"spamd"` (default) or `"rspamd"`: the one engine whose score goes through the levels
    /// below. Only one engine is asked; scores are never added up.
    pub engine: SpamEngine,
    /// `X-Spam-*` headers are added at or above this score. Default -999.0.
    pub tag_level: f64,
    /// At or above: `X-Spam-Flag: YES` and the subject tag. Default 6.31.
    pub tag2_level: f64,
    /// At or above: the spam action applies. Default 6.31.
    pub kill_level: f64,
    /// Prepended to the Subject at tag2. Default `"***Spam*** "`.
    pub subject_tag: String,
    /// `"pass"` (default), `"discard"`, `"reject"` or `"quarantine"`.
    pub action: Action,
    /// At or above this score spam is quarantined rather than delivered (a `discard` or
    /// `reject` action at `kill_level` still wins). Default: unset (off).
    pub quarantine_level: Option<f64>,
}

impl Default for Spam {
    fn default() -> Self {
        Spam {
            engine: SpamEngine::Spamd,
            tag_level: -999.0,
            tag2_level: 6.31,
            kill_level: 6.31,
            subject_tag: "***Spam*** ".into(),
            action: Action::Pass,
            quarantine_level: None,
        }
    }
}

/// `[parts]`: postsift's own MIME walk, whose decoded parts clamd scans besides the whole
/// message (amavis's `$MAXFILES`, `$MAX_EXPANSION_QUOTA`, `$MAXLEVELS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Parts {
    /// Walk the MIME structure and have clamd scan every decoded part. Default true.
    pub enabled: bool,
    /// Messages larger than this (bytes) are scanned whole only. Default 16777216.
    pub max_message_size: u64,
    /// Decoded parts kept at most; more → UNCHECKED. Default 1000.
    pub max_parts: usize,
    /// Decoded bytes of all parts together at most; more → UNCHECKED. Default 33554432.
    pub max_decoded_bytes: usize,
    /// message/rfc822 and archive nesting followed at most; deeper → UNCHECKED. Default 16.
    pub max_depth: usize,
    /// Decoded bytes one message's walk holds in memory, all parts together; past it, parts
    /// spill to unlinked temp files in `server.spool_dir` (keeping their first 4 KiB in
    /// memory while this lasts), so a decompression bomb costs disk, not RAM. At least 65536.
    /// Default 4194304 (4 MiB).
    pub max_memory: usize,
    /// What a message gets when the walk stopped at `max_parts`. Default "pass".
    pub on_max_parts: Unchecked,
    /// … at `max_decoded_bytes`. Default "pass".
    pub on_max_decoded_bytes: Unchecked,
    /// … at `max_depth`. Default "pass".
    pub on_max_depth: Unchecked,
    /// … at an archive member expanding more than 100 times (a decompression bomb).
    /// Default "pass".
    pub on_ratio: Unchecked,
    /// … at an encrypted archive member. Default "pass".
    pub on_encrypted: Unchecked,
    /// Seconds of wall-clock time one message's walk may take (decompressing included);
    /// past it the walk stops. At least 1. Default 10.
    pub max_walk_time: u64,
    /// … at `max_walk_time` (reason `time`). Default "pass".
    pub on_max_walk_time: Unchecked,
    /// … at an archive postsift will not open (reason `decoder`: an xz or 7z asking for a
    /// dictionary over 64 MiB, a zip member compressed with a method postsift does not read).
    /// Default "pass".
    pub on_decoder: Unchecked,
    /// … at a message larger than `max_message_size`, which is not walked (reason `size`).
    /// Default "pass".
    pub on_max_message_size: Unchecked,
}

/// What a message the MIME walk could not finish gets (amavis passes it tagged
/// `***UNCHECKED***`; a stricter site may tempfail or ban it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unchecked {
    /// Deliver with `headers.unchecked_subject_tag` (`***UNCHECKED*** `) in the subject.
    Pass,
    /// `451 4.7.0`: the client keeps it queued and retries (Postfix bounces it when its
    /// queue lifetime ends).
    Tempfail,
    /// Judged as a banned file: `[banned] action` decides.
    Banned,
    /// Stored in the quarantine (category UNCHECKED), `250 2.7.0 Ok, quarantined`.
    Quarantine,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            enabled: true,
            max_message_size: 16_777_216,
            max_parts: 1000,
            max_decoded_bytes: 33_554_432,
            max_depth: 16,
            max_memory: 4_194_304,
            on_max_parts: Unchecked::Pass,
            on_max_decoded_bytes: Unchecked::Pass,
            on_max_depth: Unchecked::Pass,
            on_ratio: Unchecked::Pass,
            on_encrypted: Unchecked::Pass,
            max_walk_time: 10,
            on_max_walk_time: Unchecked::Pass,
            on_decoder: Unchecked::Pass,
            on_max_message_size: Unchecked::Pass,
        }
    }
}

/// `[banned]`: attachment types refused, with amavis's semantics (see `scan::banned`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Banned {
    /// `"reject"` (default: `554 5.7.0 Reject, id=… - BANNED: <name>`, Postfix bounces it),
    /// `"discard"`, `"quarantine"`, or `"pass"` (with `X-Amavis-Alert: BANNED, message contains <type>,<name>`).
    pub action: Action,
    /// Ordered rules, first match decides, no match allows. Default: `scan::banned::default_rules`
    /// (documented in postsift.example.toml). An empty list bans nothing.
    pub rules: Option<Vec<BannedRule>>,
}

impl Default for Banned {
    fn default() -> Self {
        Banned {
            action: Action::Reject,
            rules: None,
        }
    }
}

/// One rule of `[[banned.rules]]`: every condition given must hold (each a list of
/// alternatives); a rule with none matches nothing.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BannedRule {
    /// The last extension of the declared name, without the dot, any case (`exe`).
    pub extension: Vec<String>,
    /// The last extension of a name that has another before it (`invoice.pdf.exe` → `exe`).
    pub double_extension: Vec<String>,
    /// The declared MIME type, lower case (`application/x-msdownload`).
    pub declared_type: Vec<String>,
    /// The sniffed type: `exe-ms`, `elf`, `macho`, `script`, `office-macro`, `ole2`.
    pub sniffed: Vec<String>,
    /// An archive the part sits in, at any depth (a file in a zip in a tar is in both).
    /// postsift opens `zip`, `7z`, `tar`, `gzip`, `bzip2` and `xz`; other formats (`rpm`,
    /// `cpio`, `rar`, …) are not opened, so such conditions match nothing.
    pub container: Vec<String>,
    /// Ban (true, default) or allow (false) a matching part.
    pub ban: bool,
}

/// `[headers]`: the headers postsift writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Headers {
    /// Value of `X-Virus-Scanned`. Default `"postsift at <domain of hostname>"`.
    pub virus_scanned: Option<String>,
    /// Subject tag for mail that could not be virus-scanned and was passed. Default `"***UNCHECKED*** "`.
    pub unchecked_subject_tag: String,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            virus_scanned: None,
            unchecked_subject_tag: "***UNCHECKED*** ".into(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint and the health probe behind `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz`; `""` switches
    /// it off. Default `"127.0.0.1:9724"`.
    pub listen: String,
    /// Seconds between health probes of clamd, spamd and the reinjection server (they set
    /// `postsift_scanner_up`, `postsift_reinject_up` and `/readyz`). Default 10.
    pub probe_interval: u64,
    /// Connections the HTTP endpoint serves at once; more are closed at once (counted in
    /// `postsift_listener_refused_total{listener="metrics"}`). Default 32.
    pub max_connections: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9724".into(),
            probe_interval: 10,
            max_connections: 32,
        }
    }
}

/// `[health]`: each peer's health state (see [`crate::peers`]); the probe runs every
/// `metrics.probe_interval` seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Consecutive timeouts or connection failures (messages' or probes') after which an
    /// endpoint is marked down and skipped until a probe answers. Default 3.
    pub down_after: u32,
    /// Seconds one probe of one endpoint may take. Default 5.
    pub probe_timeout: u64,
    /// The name the resolver is asked for (its SOA record) to probe it; any answer, NXDOMAIN
    /// included, proves it alive. Not `localhost.`: the resolver library answers that itself.
    /// Default `"."`.
    pub dns_probe_name: String,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down_after: 3,
            probe_timeout: 5,
            dns_probe_name: ".".into(),
        }
    }
}

/// `[greylist]`: a Postfix policy service with postgrey 1.37's decisions (its option in
/// brackets), for `check_policy_service` after `reject_unauth_destination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Greylist {
    /// Where the policy service listens: `"127.0.0.1:10023"`, or `"unix:/path"` for a Unix
    /// socket (Postfix's chrooted smtpd on Debian needs it under /var/spool/postfix). Default
    /// `[]`: greylisting off.
    pub listen: Vec<String>,
    /// Mode of the Unix sockets, octal. Default `"0666"` (postgrey's `--socketmode`).
    pub socket_mode: String,
    /// Owner and group given to the Unix sockets. Default: postsift's own.
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// A file path (the embedded SQLite store) or `redis://host:port/db` (shared by several
    /// nodes). Default `"/var/lib/postsift/greylist.db"`.
    pub store: String,
    /// Seconds a new triplet waits [--delay]. Default 300.
    pub delay: u64,
    /// Days an entry (triplet or auto-whitelisted client) is kept unseen [--max-age].
    /// Default 35.
    pub max_age: u64,
    /// How long a retry may come after the first attempt and still count [--retry-window]:
    /// days, or a string `"<n>h"` for hours. Default 2 (days).
    pub retry_window: RetryWindow,
    /// Passes (at most one an hour) after which a client is not greylisted any more
    /// [--auto-whitelist-clients]; 0 switches it off. Default 5.
    pub auto_whitelist_clients: u32,
    /// Key on the client's /24 (IPv4) or /64 (IPv6) network; false: on its address
    /// [--lookup-by-host]. Default true.
    pub lookup_by_subnet: bool,
    /// postgrey whitelist files of clients [--whitelist-clients]. Default
    /// `["/etc/postgrey/whitelist_clients", "/etc/postgrey/whitelist_clients.local"]`.
    pub whitelist_clients: Vec<PathBuf>,
    /// postgrey whitelist files of recipients [--whitelist-recipients]. Default
    /// `["/etc/postgrey/whitelist_recipients", "/etc/postgrey/whitelist_recipients.local"]`.
    pub whitelist_recipients: Vec<PathBuf>,
    /// The access(5) action for a greylisted request [--greylist-action]. Default
    /// `"DEFER_IF_PERMIT"`.
    pub action: String,
    /// Its text, `%s` the seconds left, `%r` the recipient's domain [--greylist-text].
    /// Default postgrey's: `"Greylisted, see http://postgrey.schweikert.ch/help/%r.html"`.
    pub text: String,
    /// On a triplet's first pass, answer `PREPEND X-Greylist: delayed N seconds by
    /// postsift-<version> at <hostname>; <date>`. Default true.
    pub prepend_header: bool,
    /// When the store fails or times out: `"pass"` (`DUNNO`, default) or `"tempfail"`
    /// (`DEFER_IF_PERMIT 4.3.0`).
    pub on_failure: OnFailure,
    /// Seconds a store operation may take before `on_failure` applies. Default 2.
    pub store_timeout: u64,
    /// Policy connections open at once (every Postfix smtpd process keeps one); more are
    /// closed at once. Default 256.
    pub max_connections: usize,
    /// Triplets the embedded store keeps at most (about 430 bytes each on disk); past it the
    /// daemon deletes the least recently seen, down to nine tenths, every five minutes
    /// (`postsift_greylist_evicted_total`). 0: no cap (the hourly purge only). Redis keys
    /// expire after `max_age` by themselves; cap Redis with its own `maxmemory`. Default 500000.
    pub max_triplets: u64,
    /// Honour postgrey's `policy_test_time` attribute (the request's clock), for tests only.
    /// Default false.
    pub policy_test_time: bool,
}

/// `retry_window`: whole days (`2`) or hours (`"6h"`), as postgrey's option.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RetryWindow {
    Days(u64),
    Text(String),
}

impl RetryWindow {
    /// Seconds, or None if the text is not `<n>h` or `<n>`.
    pub fn seconds(&self) -> Option<u64> {
        match self {
            RetryWindow::Days(d) => d.checked_mul(86400),
            RetryWindow::Text(t) => match t.strip_suffix(['h', 'H']) {
                Some(h) => h.parse::<u64>().ok()?.checked_mul(3600),
                None => t.parse::<u64>().ok()?.checked_mul(86400),
            },
        }
    }
}

impl Default for Greylist {
    fn default() -> Self {
        Greylist {
            listen: Vec::new(),
            socket_mode: "0666".into(),
            socket_owner: None,
            socket_group: None,
            store: "/var/lib/postsift/greylist.db".into(),
            delay: 300,
            max_age: 35,
            retry_window: RetryWindow::Days(2),
            auto_whitelist_clients: 5,
            lookup_by_subnet: true,
            whitelist_clients: vec![
                "/etc/postgrey/whitelist_clients".into(),
                "/etc/postgrey/whitelist_clients.local".into(),
            ],
            whitelist_recipients: vec![
                "/etc/postgrey/whitelist_recipients".into(),
                "/etc/postgrey/whitelist_recipients.local".into(),
            ],
            action: "DEFER_IF_PERMIT".into(),
            text: "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into(),
            prepend_header: true,
            on_failure: OnFailure::Pass,
            store_timeout: 2,
            max_connections: 256,
            max_triplets: 500_000,
            policy_test_time: false,
        }
    }
}

/// `[quarantine]`: where the `quarantine` action keeps messages, and how they are released.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quarantine {
    /// The store: one file per message under `msgs/` and the index `index.db` (SQLite).
    /// Default `"/var/lib/postsift/quarantine"`.
    pub dir: PathBuf,
    /// Days a quarantined message is kept; the daemon purges older ones hourly. Default 14.
    pub retention_days: u64,
    /// Where amavis's release protocol (AM.PDP, `request=release`, what `amavisd-release`
    /// speaks) is served: `"127.0.0.1:9998"` or `"unix:/path"`. Default `""`: off.
    pub release_listen: String,
    /// AM.PDP connections served at once; more are closed at once (counted in
    /// `postsift_listener_refused_total{listener="release"}`). An idle one is closed after
    /// `server.read_timeout`, and at shutdown between requests. Default 8.
    pub release_max_connections: usize,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            dir: "/var/lib/postsift/quarantine".into(),
            retention_days: 14,
            release_listen: String::new(),
            release_max_connections: 8,
        }
    }
}

impl Quarantine {
    /// `release_listen`, parsed (validated at load); None when off.
    pub fn release_listener(&self) -> Option<PolicyListen> {
        parse_policy_listen(&self.release_listen)
    }
}

/// One `[[policy]]` bank: settings that replace the top-level ones for the mail it matches.
/// Every key but `name` and `match` is optional; what a bank leaves out stays as the defaults
/// (and earlier banks) set it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Bank {
    /// Shown in the log line (`bank=`), the metric label and `check-config`. Required, unique.
    pub name: String,
    /// When the bank applies: every condition given must hold, each a list of alternatives.
    #[serde(rename = "match")]
    pub when: BankMatch,
    /// Don't ask clamd for this mail (amavis's `bypass_virus_checks`). If clamd is asked
    /// anyway, for other recipients of the same message, and finds a virus, the virus still
    /// counts: a bypass saves the scan, it does not deliver a known virus (set
    /// `virus.action = "pass"` in the bank for that).
    pub bypass_virus_checks: Option<bool>,
    /// Don't ask the spam engine (amavis's `bypass_spam_checks`): no `X-Spam-*` headers, never
    /// spam, even if the engine ran for other recipients of the same message.
    pub bypass_spam_checks: Option<bool>,
    pub spam: BankSpam,
    pub virus: BankVirus,
    pub banned: BankBanned,
    pub parts: BankParts,
    /// DKIM-sign the mail this bank matches (`true`, even if neither `[dkim_sign]
    /// originating_listeners` nor `networks` matches it) or not (`false`, even if they do).
    /// `[dkim_sign] enabled` must still be true and a key exist for the From domain.
    /// Default: unset (the listeners and networks decide).
    pub dkim_sign: Option<bool>,
}

/// `[policy.match]`. Listener, client and sender are the message's; `recipient` and
/// `recipient_domain` are each recipient's, and make one message split into groups.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankMatch {
    /// Addresses from `server.listen` (e.g. an originating listener on `127.0.0.1:10026`).
    pub listener: Vec<SocketAddr>,
    /// The original client's network: XFORWARD ADDR (`[UNAVAILABLE]`, as for local
    /// submissions, matches no network); without XFORWARD, the connecting client.
    pub client: Vec<IpNet>,
    /// The envelope sender's domain; `.example.com` also matches its subdomains.
    pub sender_domain: Vec<String>,
    /// Recipient addresses (`user@example.com`, any case).
    pub recipient: Vec<String>,
    /// The recipient's domain; `.example.com` also matches its subdomains.
    pub recipient_domain: Vec<String>,
}

impl BankMatch {
    /// Whether a condition matches on the recipient (not the whole message).
    pub fn per_recipient(&self) -> bool {
        !self.recipient.is_empty() || !self.recipient_domain.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.listener.is_empty()
            && self.client.is_empty()
            && self.sender_domain.is_empty()
            && !self.per_recipient()
    }
}

/// `[policy.spam]`: the `[spam]` keys a bank may set.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankSpam {
    pub tag_level: Option<f64>,
    pub tag2_level: Option<f64>,
    pub kill_level: Option<f64>,
    pub subject_tag: Option<String>,
    pub action: Option<Action>,
    pub quarantine_level: Option<f64>,
}

/// `[policy.virus]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankVirus {
    pub action: Option<Action>,
}

/// `[policy.banned]`: the action, and rules that replace `[banned] rules` whole.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankBanned {
    pub action: Option<Action>,
    pub rules: Option<Vec<BannedRule>>,
}

/// `[policy.parts]`: what an UNCHECKED message gets (`[parts] on_…`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankParts {
    pub on_max_parts: Option<Unchecked>,
    pub on_max_decoded_bytes: Option<Unchecked>,
    pub on_max_depth: Option<Unchecked>,
    pub on_ratio: Option<Unchecked>,
    pub on_encrypted: Option<Unchecked>,
    pub on_max_walk_time: Option<Unchecked>,
    pub on_decoder: Option<Unchecked>,
    pub on_max_message_size: Option<Unchecked>,
}

/// A `greylist.listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Greylist {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The listen entries, parsed (validated at load).
    pub fn listeners(&self) -> Vec<PolicyListen> {
        self.listen
            .iter()
            .filter_map(|l| parse_policy_listen(l))
            .collect()
    }

    /// The socket mode, parsed (validated at load).
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o666)
    }

    /// The timings in seconds.
    pub fn params(&self) -> crate::greylist::decide::Params {
        crate::greylist::decide::Params {
            delay: self.delay as i64,
            max_age: (self.max_age * 86400) as i64,
            retry_window: self.retry_window.seconds().unwrap_or(2 * 86400) as i64,
            awl_clients: self.auto_whitelist_clients,
        }
    }
}

fn parse_policy_listen(s: &str) -> Option<PolicyListen> {
    if let Some(p) = s.strip_prefix("unix:") {
        return (p.starts_with('/')).then(|| PolicyListen::Unix(p.into()));
    }
    s.parse().ok().map(PolicyListen::Tcp)
}

/// `[dns]`: the resolver mail authentication (`[auth]`) asks. Answers are cached in-process,
/// shared by all sessions, for as long as their TTL says (see `dns`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    /// Name servers as `"ip:port"` (`"127.0.0.1:53"`, `"[::1]:5353"`), asked in order.
    /// Default `[]`: the `nameserver` lines of /etc/resolv.conf, port 53.
    pub servers: Vec<String>,
    /// Seconds to wait for one answer. Default 5.
    pub timeout: u64,
    /// Tries per query before it fails (then the check that asked gives `temperror`).
    /// Default 2.
    pub attempts: usize,
    /// Answers kept in postsift's own record cache, per record type (TXT, MX, A, AAAA, PTR);
    /// the resolver below it keeps `cache_bytes / 64 KiB` raw answers (at most as many).
    /// Default 10000.
    pub cache_size: usize,
    /// Bytes postsift's record cache keeps per record type (an estimate of each parsed
    /// answer's size, key included); the entries nearest their expiry go first. Default
    /// 8388608 (8 MiB).
    pub cache_bytes: usize,
    /// Largest answer kept in the cache, in bytes (estimated as for `cache_bytes`); a larger one
    /// is used for the message that asked and not kept. Default 16384.
    pub max_record_bytes: usize,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            timeout: 5,
            attempts: 2,
            cache_size: 10_000,
            cache_bytes: 8 << 20,
            max_record_bytes: 16 << 10,
        }
    }
}

impl Dns {
    /// The servers, parsed (validated at load).
    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

/// What a DMARC failure does (`[auth] dmarc_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    /// Reported in Authentication-Results only.
    Ignore,
    /// Reported, and its score (`DMARC_*`) added to the spam score.
    Score,
    /// Scored, and the domain's policy applied: p=reject → `550 5.7.1`, p=quarantine → spam.
    Enforce,
}

/// `[auth]`: mail authentication (SPF, DKIM, DMARC, ARC) checked on every message, written to
/// `Authentication-Results` and scored like SpamAssassin's rules of the same names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Check and add `Authentication-Results` (and remove forged ones carrying
    /// `authserv_id`). Default true.
    pub enabled: bool,
    /// The authserv-id of the `Authentication-Results` header postsift writes and removes.
    /// Default: `server.hostname`.
    pub authserv_id: Option<String>,
    /// SPF for MAIL FROM and HELO, with the client's address and HELO from XFORWARD (without
    /// XFORWARD ADDR, SPF is not checked). Default true.
    pub spf: bool,
    /// Every DKIM signature. Default true.
    pub dkim: bool,
    /// DMARC for the From domain. Default true.
    pub dmarc: bool,
    /// The ARC chain. Default true.
    pub arc: bool,
    /// `"ignore"`, `"score"` (default) or `"enforce"`.
    pub dmarc_policy: DmarcPolicy,
    /// ARC sealers (the `d=` of the newest ARC-Seal) whose passing chain exempts a message
    /// from a DMARC reject (mailing lists, forwarders). Default `[]`.
    pub trusted_arc_sealers: Vec<String>,
    /// Seconds all the checks of one message may take together; a method not finished by
    /// then gives `temperror`. Default 20.
    pub timeout: u64,
    /// Messages larger than this (bytes) get SPF only: DKIM, ARC and DMARC need the whole
    /// message in memory, and are left out rather than guessed. Default 16777216.
    pub max_message_size: u64,
    /// DKIM results written in `Authentication-Results` at most (passes first, then in the
    /// message's order); the header says how many more there were, and
    /// `postsift_auth_dkim_results_omitted_total` counts them. Default 10.
    pub max_dkim_results: usize,
    /// Scores by rule name, over SpamAssassin's defaults (`SPF_PASS = -0.001`, …; the full
    /// list is in postsift.example.toml). A rule scored 0 is off. Default: SpamAssassin's.
    pub scores: BTreeMap<String, f64>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            authserv_id: None,
            spf: true,
            dkim: true,
            dmarc: true,
            arc: true,
            dmarc_policy: DmarcPolicy::Score,
            trusted_arc_sealers: Vec::new(),
            timeout: 20,
            max_message_size: 16_777_216,
            max_dkim_results: 10,
            scores: BTreeMap::new(),
        }
    }
}

/// What a DKIM signing failure does (`[dkim_sign] on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignOnError {
    /// Logged and counted; the message goes on unsigned.
    Pass,
    /// `451 4.3.0`: the client keeps the message and retries.
    Tempfail,
}

/// The signing algorithm of a `[[dkim_sign.keys]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SignAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl SignAlgorithm {
    /// As the file and the `a=` tag write it.
    pub fn name(self) -> &'static str {
        match self {
            SignAlgorithm::RsaSha256 => "rsa-sha256",
            SignAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// `[dkim_sign]`: DKIM signatures on outgoing mail (see [`crate::sign`]). A message is signed
/// when signing is enabled, it came in on an originating listener or from a client in
/// `networks` (or a policy bank says `dkim_sign = true`), and a key is configured for the
/// domain of its one `From:` address.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimSign {
    /// Sign at all. Default false.
    pub enabled: bool,
    /// Addresses from `server.listen` whose mail is outgoing (amavis's ORIGINATING bank on
    /// `127.0.0.1:10026`). Default `[]`.
    pub originating_listeners: Vec<SocketAddr>,
    /// Networks of the original client (XFORWARD ADDR) whose mail is outgoing, e.g. your
    /// `mynetworks`. A message without XFORWARD ADDR, or with `[UNAVAILABLE]`, matches none.
    /// Default `[]`.
    pub networks: Vec<IpNet>,
    /// `"pass"` (default: the message goes on unsigned, logged and counted) or `"tempfail"`
    /// (`451 4.3.0`, the client retries).
    pub on_error: SignOnError,
    /// The header fields signed, those present in the message (each instance), in this order.
    /// Default: From, To, Cc, Subject, Date, Message-ID, Reply-To, In-Reply-To, References,
    /// MIME-Version, Content-Type, Content-Transfer-Encoding and the List-* fields.
    pub headers: Vec<String>,
    /// Sign `From` once more than it occurs, so that a second From added on the way breaks
    /// the signature. Default true.
    pub oversign_from: bool,
    /// Keys, one or more per domain (each signs: RSA and Ed25519 side by side). Default none.
    pub keys: Vec<DkimKey>,
    /// Set by a policy bank's `dkim_sign` (`banks::effective`), never by the file.
    #[serde(skip)]
    pub by_bank: Option<bool>,
    /// The keys, loaded and checked at load (`Config::parse`); shared by clones.
    #[serde(skip)]
    pub loaded: crate::sign::Keys,
}

impl Default for DkimSign {
    fn default() -> Self {
        DkimSign {
            enabled: false,
            originating_listeners: Vec::new(),
            networks: Vec::new(),
            on_error: SignOnError::Pass,
            headers: crate::sign::DEFAULT_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            oversign_from: true,
            keys: Vec::new(),
            by_bank: None,
            loaded: crate::sign::Keys::default(),
        }
    }
}

/// One `[[dkim_sign.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The From domain it signs for, and the signature's `d=` (exact: a key for example.com
    /// does not sign mail from sub.example.com). Required.
    pub domain: String,
    /// The `s=` selector; the public key is published at `<selector>._domainkey.<domain>`.
    /// Required.
    pub selector: String,
    /// The private key: a PEM file (RSA in PKCS#1 or PKCS#8, Ed25519 in PKCS#8), as `postsift
    /// dkim genkey` writes it. Required.
    pub key: PathBuf,
    /// `"rsa-sha256"` (default) or `"ed25519-sha256"`; must be the key's kind.
    #[serde(default = "rsa_sha256")]
    pub algorithm: SignAlgorithm,
}

fn rsa_sha256() -> SignAlgorithm {
    SignAlgorithm::RsaSha256
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `"plain"` (default) or `"json"`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// `--config FILE` if given, else [`DEFAULT_PATH`] if it exists, else the built-in defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, Error> {
        match path {
            Some(p) => Config::load(p),
            None if Path::new(DEFAULT_PATH).exists() => Config::load(Path::new(DEFAULT_PATH)),
            None => Ok(Config::default()),
        }
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let parse_error = |e: toml::de::Error| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let mut config: Config = toml::from_str(text).map_err(parse_error)?;
        // Parsed a second time, untyped, only to learn which sections and keys the file has.
        let raw: toml::Table = text.parse().map_err(parse_error)?;
        config.present = raw
            .into_iter()
            .filter_map(|(section, value)| match value {
                toml::Value::Table(t) => Some((section, t.into_iter().map(|(k, _)| k).collect())),
                _ => None,
            })
            .collect();
        config.validate(path)?;
        Ok(config)
    }

    /// Refuses what cannot work. Each check names exactly one key, the one to change.
    fn validate(&mut self, path: &Path) -> Result<(), Error> {
        let bad = |key: &'static str, message: &str| Error::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if self.server.listen.is_empty() {
            return Err(bad("server.listen", "at least one address is needed"));
        }
        if self.server.max_sessions == 0 {
            return Err(bad("server.max_sessions", "must be at least 1"));
        }
        if self.server.max_message_size == 0 {
            return Err(bad("server.max_message_size", "must be at least 1"));
        }
        if self.server.max_recipients == 0 {
            return Err(bad("server.max_recipients", "must be at least 1"));
        }
        if let Some(h) = &self.server.hostname {
            if h.is_empty() || h.contains(char::is_whitespace) {
                return Err(bad("server.hostname", "must be a host name without spaces"));
            }
        }
        if self.reinject.to.parse::<SocketAddr>().is_err() && !self.reinject.to.contains(':') {
            return Err(bad("reinject.to", "expected host:port"));
        }
        for (key, eps) in [
            ("clamd.endpoints", &self.clamd.endpoints),
            ("spamd.endpoints", &self.spamd.endpoints),
        ] {
            for ep in eps {
                if !(ep.starts_with('/')
                    || ep
                        .rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok()))
                {
                    return Err(bad(
                        key,
                        &format!("`{ep}` is neither an absolute socket path nor host:port"),
                    ));
                }
            }
        }
        for ep in &self.rspamd.endpoints {
            if ep
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(bad("rspamd.endpoints", &format!("`{ep}` is not host:port")));
            }
        }
        if self.server.max_header_size < 1024 {
            return Err(bad("server.max_header_size", "must be at least 1024 bytes"));
        }
        if self.server.max_memory < self.server.spool_threshold {
            return Err(bad(
                "server.max_memory",
                "must be at least server.spool_threshold (one message's share)",
            ));
        }
        if self.server.max_spool_files == 0 {
            return Err(bad("server.max_spool_files", "must be at least 1"));
        }
        if self.parts.max_memory < 65_536 {
            return Err(bad("parts.max_memory", "must be at least 65536 bytes"));
        }
        if self.parts.max_walk_time == 0 {
            return Err(bad("parts.max_walk_time", "must be at least 1 second"));
        }
        if self.server.max_junk_commands == 0 {
            return Err(bad("server.max_junk_commands", "must be at least 1"));
        }
        self.validate_greylist(&bad)?;
        self.validate_banks(&bad)?;
        if self.quarantine.retention_days == 0 {
            return Err(bad("quarantine.retention_days", "must be at least 1"));
        }
        if !self.quarantine.release_listen.is_empty()
            && self.quarantine.release_listener().is_none()
        {
            return Err(bad(
                "quarantine.release_listen",
                "expected ip:port, unix:/absolute/path, or \"\" to switch it off",
            ));
        }
        if let Some(q) = self.spam.quarantine_level {
            if !q.is_finite() {
                return Err(bad("spam.quarantine_level", "must be a finite number"));
            }
        }
        self.validate_auth(&bad)?;
        self.validate_dkim_sign(path)?;
        for (key, n) in [
            ("metrics.max_connections", self.metrics.max_connections),
            (
                "quarantine.release_max_connections",
                self.quarantine.release_max_connections,
            ),
        ] {
            if n == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        // A zero timeout fails every operation it guards, so it is never what was meant.
        for (key, secs) in [
            ("server.read_timeout", self.server.read_timeout),
            ("server.write_timeout", self.server.write_timeout),
            ("reinject.connect_timeout", self.reinject.connect_timeout),
            ("reinject.command_timeout", self.reinject.command_timeout),
            ("reinject.data_timeout", self.reinject.data_timeout),
            ("clamd.connect_timeout", self.clamd.connect_timeout),
            ("clamd.timeout", self.clamd.timeout),
            ("spamd.connect_timeout", self.spamd.connect_timeout),
            ("spamd.io_timeout", self.spamd.io_timeout),
            ("spamd.timeout", self.spamd.timeout),
            ("rspamd.connect_timeout", self.rspamd.connect_timeout),
            ("rspamd.timeout", self.rspamd.timeout),
            ("metrics.probe_interval", self.metrics.probe_interval),
            ("health.probe_timeout", self.health.probe_timeout),
            ("dns.timeout", self.dns.timeout),
            ("auth.timeout", self.auth.timeout),
        ] {
            if secs == 0 {
                return Err(bad(key, "must be at least 1 second"));
            }
        }
        if self.health.down_after == 0 {
            return Err(bad("health.down_after", "must be at least 1"));
        }
        if self.health.dns_probe_name.trim().is_empty() {
            return Err(bad("health.dns_probe_name", "must be a DNS name"));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen",
                "expected ip:port, or \"\" to switch it off",
            ));
        }
        // TOML has `inf` and `nan`; neither compares usefully with a score.
        for (key, level) in [
            ("spam.tag_level", self.spam.tag_level),
            ("spam.tag2_level", self.spam.tag2_level),
            ("spam.kill_level", self.spam.kill_level),
        ] {
            if !level.is_finite() {
                return Err(bad(key, "must be a finite number"));
            }
        }
        if self.spam.tag2_level < self.spam.tag_level {
            return Err(bad("spam.tag2_level", "must not be below spam.tag_level"));
        }
        // The selected engine switched off while the other one is configured: no spam check
        // runs at all, which nobody who wrote both sections meant.
        let [(engine, engine_endpoints), (other, other_endpoints)] = self.spam_engines();
        if engine_endpoints.is_empty()
            && self.present.contains_key(other)
            && !other_endpoints.is_empty()
        {
            return Err(bad(
                "spam.engine",
                &format!(
                    "\"{engine}\" but {engine}.endpoints is empty while [{other}] is configured, \
                     so no spam check would run; set spam.engine = \"{other}\" (or remove \
                     [{other}] if no spam check is meant)"
                ),
            ));
        }
        Ok(())
    }

    fn validate_auth(&self, bad: &dyn Fn(&'static str, &str) -> Error) -> Result<(), Error> {
        for s in &self.dns.servers {
            if s.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    "dns.servers",
                    &format!("{s:?}: expected ip:port, such as \"127.0.0.1:53\""),
                ));
            }
        }
        if self.dns.attempts == 0 {
            return Err(bad("dns.attempts", "must be at least 1"));
        }
        if self.auth.max_dkim_results == 0 {
            return Err(bad("auth.max_dkim_results", "must be at least 1"));
        }
        if self.dns.cache_bytes < self.dns.max_record_bytes {
            return Err(bad(
                "dns.cache_bytes",
                "must be at least dns.max_record_bytes",
            ));
        }
        if self.dns.cache_size == 0 {
            return Err(bad("dns.cache_size", "must be at least 1"));
        }
        if let Some(id) = &self.auth.authserv_id {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(bad(
                    "auth.authserv_id",
                    "must be a host name: printable ASCII without spaces or ';'",
                ));
            }
        }
        for (name, score) in &self.auth.scores {
            if !crate::scan::auth::RULES.iter().any(|(r, _)| r == name) {
                return Err(bad(
                    "auth.scores",
                    &format!(
                        "unknown rule {name:?}; known: {}",
                        crate::scan::auth::RULES
                            .iter()
                            .map(|(r, _)| *r)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if !score.is_finite() {
                return Err(bad(
                    "auth.scores",
                    &format!("{name}: must be a finite number"),
                ));
            }
        }
        for d in &self.auth.trusted_arc_sealers {
            if d.is_empty() || d.contains(char::is_whitespace) {
                return Err(bad(
                    "auth.trusted_arc_sealers",
                    &format!("{d:?}: expected a domain name"),
                ));
            }
        }
        Ok(())
    }

    /// The signing keys are loaded here, so a bad key file stops `check-config`, `run` and a
    /// reload, naming the entry.
    fn validate_dkim_sign(&mut self, path: &Path) -> Result<(), Error> {
        let at = |key: String, message: String| Error::InvalidAt {
            path: path.to_owned(),
            key,
            message,
        };
        let d = &self.dkim_sign;
        if let Some(l) = d
            .originating_listeners
            .iter()
            .find(|l| !self.server.listen.contains(l))
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                key: "dkim_sign.originating_listeners",
                message: format!("{l} is not in server.listen, so no mail arrives there"),
            });
        }
        if let Some(h) = d
            .headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                key: "dkim_sign.headers",
                message: format!("{h:?} is not a header field name"),
            });
        }
        if !d.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(Error::Invalid {
                path: path.to_owned(),
                key: "dkim_sign.headers",
                message: "must include From (RFC 6376 5.4)".into(),
            });
        }
        let mut seen = BTreeSet::new();
        for (i, k) in d.keys.iter().enumerate() {
            let name = |field: &str| format!("dkim_sign.keys[{i}].{field}");
            let domain_ok = |s: &str| {
                !s.is_empty()
                    && !s.starts_with('.')
                    && !s.ends_with('.')
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            };
            if !domain_ok(&k.domain) {
                return Err(at(
                    name("domain"),
                    format!("{:?} is not a domain", k.domain),
                ));
            }
            if !domain_ok(&k.selector) {
                return Err(at(
                    name("selector"),
                    format!(
                        "{:?} is not a selector (letters, digits, '-', '.', '_')",
                        k.selector
                    ),
                ));
            }
            if !seen.insert((
                k.domain.to_ascii_lowercase(),
                k.selector.to_ascii_lowercase(),
            )) {
                return Err(at(
                    name("selector"),
                    format!("{}/{} is configured twice", k.domain, k.selector),
                ));
            }
        }
        let loaded = crate::sign::Keys::load(&d.keys)
            .map_err(|(i, e)| at(format!("dkim_sign.keys[{i}].key"), e.to_string()))?;
        self.dkim_sign.loaded = loaded;
        Ok(())
    }

    /// A bank must be able to match, and what it sets must be valid on its own.
    fn validate_banks(&self, bad: &dyn Fn(&'static str, &str) -> Error) -> Result<(), Error> {
        let mut names = BTreeSet::new();
        for (i, b) in self.policy.iter().enumerate() {
            let this = if b.name.is_empty() {
                format!("bank #{}", i + 1)
            } else {
                format!("bank \"{}\"", b.name)
            };
            let no = |key: &'static str, what: &str| Err(bad(key, &format!("{this}: {what}")));
            if b.name.is_empty() || b.name.contains(|c: char| c.is_whitespace() || c == ',') {
                return no(
                    "policy.name",
                    "every bank needs a name, without spaces or commas",
                );
            }
            if !names.insert(b.name.as_str()) {
                return no("policy.name", "the name is used by an earlier bank");
            }
            let m = &b.when;
            if m.is_empty() {
                return no(
                    "policy.match",
                    "matches nothing: give at least one of listener, client, sender_domain, \
                     recipient, recipient_domain",
                );
            }
            if let Some(l) = m.listener.iter().find(|l| !self.server.listen.contains(l)) {
                return no(
                    "policy.match.listener",
                    &format!("{l} is not in server.listen, so no mail arrives there"),
                );
            }
            if let Some(key) = crate::banks::trust_by_sender_only(b) {
                return no(
                    key,
                    "matches on sender_domain only, which any Internet sender can type in \
                     MAIL FROM; also match a listener or client networks (e.g. an originating \
                     listener)",
                );
            }
            for (key, domains) in [
                ("policy.match.sender_domain", &m.sender_domain),
                ("policy.match.recipient_domain", &m.recipient_domain),
            ] {
                if let Some(d) = domains.iter().find(|d| {
                    let d = d.strip_prefix('.').unwrap_or(d);
                    d.is_empty() || d.contains(['@', ' ']) || d.starts_with('.')
                }) {
                    return no(key, &format!("{d:?} is not a domain"));
                }
            }
            if let Some(r) = m.recipient.iter().find(|r| {
                r.rsplit_once('@')
                    .is_none_or(|(l, d)| l.is_empty() || d.is_empty() || r.contains(' '))
            }) {
                return no(
                    "policy.match.recipient",
                    &format!("{r:?} is not an address"),
                );
            }
            for (key, level) in [
                ("policy.spam.tag_level", b.spam.tag_level),
                ("policy.spam.tag2_level", b.spam.tag2_level),
                ("policy.spam.kill_level", b.spam.kill_level),
                ("policy.spam.quarantine_level", b.spam.quarantine_level),
            ] {
                if level.is_some_and(|l| !l.is_finite()) {
                    return no(key, "must be a finite number");
                }
            }
            let e = crate::banks::effective(self, &[i]);
            if e.spam.tag2_level < e.spam.tag_level {
                return no(
                    "policy.spam.tag2_level",
                    "is below the tag_level in effect for this bank",
                );
            }
        }
        Ok(())
    }

    fn validate_greylist(&self, bad: &dyn Fn(&'static str, &str) -> Error) -> Result<(), Error> {
        let g = &self.greylist;
        for l in &g.listen {
            if parse_policy_listen(l).is_none() {
                return Err(bad(
                    "greylist.listen",
                    &format!("{l:?}: expected ip:port or unix:/absolute/path"),
                ));
            }
        }
        if u32::from_str_radix(&g.socket_mode, 8).map_or(true, |m| m > 0o777) {
            return Err(bad(
                "greylist.socket_mode",
                "expected an octal mode such as \"0660\"",
            ));
        }
        if g.store.is_empty() {
            return Err(bad(
                "greylist.store",
                "expected a file path or redis://host:port/db",
            ));
        }
        for (key, n) in [
            ("greylist.delay", g.delay),
            ("greylist.max_age", g.max_age),
            ("greylist.store_timeout", g.store_timeout),
            ("greylist.max_connections", g.max_connections as u64),
        ] {
            if n == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        if g.retry_window.seconds().is_none_or(|s| s == 0) {
            return Err(bad(
                "greylist.retry_window",
                "expected days (2) or hours (\"6h\"), at least 1",
            ));
        }
        if g.action.trim().is_empty()
            || g.action.contains(['\n', '\r'])
            || g.text.contains(['\n', '\r'])
        {
            return Err(bad(
                "greylist.action",
                "must be one line, not empty (with greylist.text)",
            ));
        }
        Ok(())
    }

    /// What the file configures that postsift will not use: each message names the unused key
    /// (or section) and the key that makes it unused. Not errors: the configuration works, and
    /// keeping a section for a later switch is legitimate. `check-config` prints them and still
    /// exits 0; `run` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for name in crate::banks::client_banks_matching_postfix(self) {
            out.push(format!(
                "policy bank \"{name}\": match.client includes server.allow_networks, so when \
                 Postfix sends no XFORWARD the client is Postfix itself and the bank applies to \
                 every message; set lmtp_send_xforward_command = yes (or \
                 smtp_send_xforward_command) on postsift's transport in master.cf"
            ));
        }
        let [(engine, engine_endpoints), (other, _)] = self.spam_engines();
        if self.present.contains_key(other) {
            out.push(format!(
                "[{other}] is not used: spam.engine is \"{engine}\"; set spam.engine = \
                 \"{other}\" to scan with {other}, or remove [{other}]"
            ));
        }
        for (section, endpoints, what) in [
            ("clamd", &self.clamd.endpoints[..], "virus scanning"),
            (engine, engine_endpoints, "spam scanning"),
        ] {
            if !endpoints.is_empty() {
                continue;
            }
            let Some(keys) = self.present.get(section) else {
                continue;
            };
            let unused = keys.iter().filter(|k| *k != "endpoints");
            if unused.clone().next().is_some() {
                out.push(format!(
                    "{} not used: {section}.endpoints is empty, so {what} is off",
                    Self::describe(section, unused)
                ));
            }
        }
        if !self.auth.enabled {
            if self.present.contains_key("dns") {
                out.push(
                    "[dns] is not used: auth.enabled is false, and only mail authentication \
                     asks DNS"
                        .to_owned(),
                );
            }
            if let Some(keys) = self.present.get("auth") {
                let unused = keys.iter().filter(|k| *k != "enabled");
                if unused.clone().next().is_some() {
                    out.push(format!(
                        "{} not used: auth.enabled is false",
                        Self::describe("auth", unused)
                    ));
                }
            }
        }
        // Only the non-default value: it asks for 451s that will never be given.
        if engine == "rspamd"
            && !self.rspamd.use_action
            && self.rspamd.greylist_action == OnFailure::Tempfail
        {
            out.push(
                "rspamd.greylist_action is not used: rspamd.use_action is false, so rspamd's \
                 score goes through the [spam] levels and its greylist action is ignored"
                    .to_owned(),
            );
        }
        out.extend(self.dkim_sign_warnings());
        out.extend(self.parts_size_warning());
        out
    }

    /// `[dkim_sign]` written so that nothing is ever signed.
    /// Messages over `parts.max_message_size` are not walked (UNCHECKED, reason `size`): a
    /// configuration that accepts larger ones is told so. Not for the defaults (16 MiB walked,
    /// 50 MiB accepted), whose gap the README documents.
    fn parts_size_warning(&self) -> Option<String> {
        let (walked, accepted) = (self.parts.max_message_size, self.server.max_message_size);
        let defaults = (
            Parts::default().max_message_size,
            Server::default().max_message_size,
        );
        (self.parts.enabled && walked < accepted && (walked, accepted) != defaults).then(|| {
            format!(
                "parts.max_message_size ({walked}) is below server.max_message_size \
                 ({accepted}): larger messages are not walked, so the banned-file rules do not \
                 see their parts; they are UNCHECKED (reason size, parts.on_max_message_size)"
            )
        })
    }

    fn dkim_sign_warnings(&self) -> Vec<String> {
        let d = &self.dkim_sign;
        let mut out = Vec::new();
        if !d.enabled {
            if !d.keys.is_empty() {
                out.push(
                    "[[dkim_sign.keys]] are not used: dkim_sign.enabled is false, so nothing is \
                     signed"
                        .to_owned(),
                );
            }
            return out;
        }
        if d.keys.is_empty() {
            out.push(
                "dkim_sign.enabled is true but no [[dkim_sign.keys]] are configured: nothing is \
                 signed"
                    .to_owned(),
            );
        }
        let by_bank = self.policy.iter().any(|b| b.dkim_sign == Some(true));
        if d.originating_listeners.is_empty() && d.networks.is_empty() && !by_bank {
            out.push(
                "dkim_sign.enabled is true but no mail is outgoing: set \
                 dkim_sign.originating_listeners or dkim_sign.networks, or dkim_sign = true in a \
                 [[policy]] bank"
                    .to_owned(),
            );
        }
        out
    }

    /// The selected spam engine, then the other one: section name and endpoints.
    fn spam_engines(&self) -> [(&'static str, &[String]); 2] {
        let spamd = ("spamd", &self.spamd.endpoints[..]);
        let rspamd = ("rspamd", &self.rspamd.endpoints[..]);
        match self.spam.engine {
            SpamEngine::Spamd => [spamd, rspamd],
            SpamEngine::Rspamd => [rspamd, spamd],
        }
    }

    /// `clamd.timeout is`, `clamd.on_failure, clamd.timeout are`.
    fn describe<'a>(section: &str, keys: impl Iterator<Item = &'a String>) -> String {
        let keys: Vec<String> = keys.map(|k| format!("{section}.{k}")).collect();
        match keys.len() {
            1 => format!("{} is", keys[0]),
            _ => format!("{} are", keys.join(", ")),
        }
    }

    /// Whether anything can put a message into the quarantine or release one from it: only
    /// then is `[quarantine] dir` opened (and created).
    pub fn uses_quarantine(&self) -> bool {
        let q = Action::Quarantine;
        let p = &self.parts;
        self.virus.action == q
            || self.banned.action == q
            || self.spam.action == q
            || self.spam.quarantine_level.is_some()
            || [
                p.on_max_parts,
                p.on_max_decoded_bytes,
                p.on_max_depth,
                p.on_ratio,
                p.on_encrypted,
                p.on_max_walk_time,
                p.on_decoder,
                p.on_max_message_size,
            ]
            .contains(&Unchecked::Quarantine)
            || !self.quarantine.release_listen.is_empty()
            || self.policy.iter().any(|b| {
                let p = &b.parts;
                [b.virus.action, b.banned.action, b.spam.action].contains(&Some(q))
                    || b.spam.quarantine_level.is_some()
                    || [
                        p.on_max_parts,
                        p.on_max_decoded_bytes,
                        p.on_max_depth,
                        p.on_ratio,
                        p.on_encrypted,
                        p.on_max_walk_time,
                        p.on_decoder,
                        p.on_max_message_size,
                    ]
                    .contains(&Some(Unchecked::Quarantine))
            })
    }

    /// The authserv-id of `Authentication-Results`: `auth.authserv_id`, else the host name.
    pub fn authserv_id(&self) -> String {
        self.auth
            .authserv_id
            .clone()
            .unwrap_or_else(|| self.hostname())
    }

    /// The host name used in the greeting, Received and X-Virus-Scanned.
    pub fn hostname(&self) -> String {
        self.server.hostname.clone().unwrap_or_else(system_hostname)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.server.read_timeout)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.server.write_timeout)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.server
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }
}

/// The system's host name, as `hostname -f` would give it when /etc/hostname holds an FQDN.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_owned();
            }
        }
    }
    "localhost".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, Error> {
        Config::parse(t, Path::new("test.toml"))
    }

    /// Issue 16: messages over parts.max_message_size were not walked, silently.
    #[test]
    fn parts_max_message_size_below_the_accepted_size_warns() {
        let w = |t: &str| parse(t).unwrap().warnings().join("\n");
        let warned = w("[parts]\nmax_message_size = 1000000\n");
        assert!(
            warned.contains("parts.max_message_size (1000000) is below server.max_message_size"),
            "{warned}"
        );
        assert!(warned.contains("parts.on_max_message_size"), "{warned}");
        let w2 = w("[server]\nmax_message_size = 60000000\n");
        assert!(w2.contains("parts.max_message_size (16777216)"), "{w2}");
        // Equal, walk off, or the documented defaults: nothing to say.
        assert_eq!(w("[parts]\nmax_message_size = 52428800\n"), "");
        assert_eq!(
            w("[parts]\nenabled = false\nmax_message_size = 1000000\n"),
            ""
        );
        assert_eq!(w(""), "");
        assert!(parse("[parts]\nmax_walk_time = 0\n")
            .unwrap_err()
            .to_string()
            .contains("parts.max_walk_time"));
    }

    #[test]
    fn dkim_sign_that_signs_nothing_warns() {
        let w = |t: &str| parse(t).unwrap().warnings().join("\n");
        assert_eq!(w("[dkim_sign]\nenabled = false\n"), "");
        assert!(w("[dkim_sign]\nenabled = true\n").contains("no [[dkim_sign.keys]]"));
        assert!(w("[dkim_sign]\nenabled = true\n").contains("no mail is outgoing"));
        let banked = "[dkim_sign]\nenabled = true\n[[policy]]\nname = \"o\"\n\
                      match.client = [\"192.0.2.0/24\"]\ndkim_sign = true\n";
        assert!(!w(banked).contains("no mail is outgoing"), "{}", w(banked));
        let e = parse("[dkim_sign]\noriginating_listeners = [\"127.0.0.1:10026\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dkim_sign.originating_listeners`"), "{e}");
        let e = parse("[dkim_sign]\nheaders = [\"To\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dkim_sign.headers`"), "{e}");
        let e = parse(
            "[[dkim_sign.keys]]\ndomain = \"a b\"\nselector = \"s\"\nkey = \"/nonexistent\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`dkim_sign.keys[0].domain`"), "{e}");
        let e = parse(
            "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"/nonexistent\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`dkim_sign.keys[0].key`") && e.contains("/nonexistent"),
            "{e}"
        );
    }

    #[test]
    fn defaults_match_debian_paths() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:10024".parse().unwrap()]);
        assert_eq!(c.clamd.endpoints, vec!["/run/clamav/clamd.ctl"]);
        assert_eq!(c.spamd.endpoints, vec!["127.0.0.1:783"]);
        assert_eq!(c.reinject.to, "127.0.0.1:10025");
        assert_eq!(c.clamd.on_failure, OnFailure::Tempfail);
        assert_eq!(c.spamd.on_failure, OnFailure::Pass);
        assert_eq!(c.virus.action, Action::Discard);
        assert_eq!(c.spam.kill_level, 6.31);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[spam]\nkill_levle = 5\n").unwrap_err().to_string();
        assert!(e.contains("kill_levle"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = parse("[virus]\naction = \"bounce\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("action") || e.contains("bounce"), "{e}");
        let e = parse("[clamd]\nendpoints = [\"clamd.sock\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("clamd.endpoints"), "{e}");
        let e = parse("[parts]\nmax_memory = 4096\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("parts.max_memory"), "{e}");
    }

    #[test]
    fn example_file_parses_without_warnings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("postsift.example.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.warnings(), Vec::<String>::new());
        assert!(parse("").unwrap().warnings().is_empty());
    }

    /// The switch the example file describes: uncomment [rspamd], set the engine. It works, and
    /// the [spamd] left in place is pointed out.
    #[test]
    fn example_file_switched_to_rspamd_warns_about_spamd() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("postsift.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut switched = String::new();
        let mut in_rspamd = false;
        for line in text.lines() {
            in_rspamd = (in_rspamd && !line.is_empty()) || line == "# [rspamd]";
            let key = line
                .strip_prefix("# ")
                .and_then(|l| l.split_once(" = "))
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            let line = match line {
                "# [rspamd]" => "[rspamd]",
                "engine = \"spamd\"" => "engine = \"rspamd\"",
                l if in_rspamd && key => &l[2..],
                l => l,
            };
            switched.push_str(line);
            switched.push('\n');
        }
        let c = parse(&switched).unwrap();
        assert_eq!(c.spam.engine, SpamEngine::Rspamd);
        assert_eq!(c.rspamd.password.as_deref(), Some("secret"));
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("[spamd] is not used"), "{w:?}");
    }

    /// The error message for `text`, which must name `key` (in backticks: exactly that key).
    fn refused(text: &str, key: &str) -> String {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(&format!("`{key}`")), "{text:?} → {e}");
        e
    }

    #[test]
    fn zero_timeout_names_its_own_key() {
        for key in [
            "server.read_timeout",
            "server.write_timeout",
            "reinject.connect_timeout",
            "reinject.command_timeout",
            "reinject.data_timeout",
            "clamd.connect_timeout",
            "clamd.timeout",
            "spamd.connect_timeout",
            "spamd.io_timeout",
            "spamd.timeout",
            "rspamd.connect_timeout",
            "rspamd.timeout",
            "metrics.probe_interval",
        ] {
            let (section, name) = key.split_once('.').unwrap();
            let e = refused(&format!("[{section}]\n{name} = 0\n"), key);
            assert!(e.contains("at least 1 second"), "{e}");
        }
    }

    #[test]
    fn non_finite_level_names_its_own_key() {
        for key in ["tag_level", "tag2_level", "kill_level"] {
            for value in ["nan", "inf", "-inf"] {
                refused(
                    &format!("[spam]\n{key} = {value}\n"),
                    &format!("spam.{key}"),
                );
            }
        }
        refused(
            "[spam]\ntag_level = 5.0\ntag2_level = 4.0\n",
            "spam.tag2_level",
        );
    }

    #[test]
    fn selected_engine_off_while_the_other_is_configured_is_refused() {
        let e = refused(
            "[spamd]\nendpoints = []\n[rspamd]\nendpoints = [\"127.0.0.1:11333\"]\n",
            "spam.engine",
        );
        assert!(e.contains("spamd.endpoints is empty"), "{e}");
        assert!(e.contains("set spam.engine = \"rspamd\""), "{e}");
        // A bare [rspamd] means rspamd's default endpoint: the same mistake.
        refused("[spamd]\nendpoints = []\n[rspamd]\n", "spam.engine");
        let e = refused(
            "[spam]\nengine = \"rspamd\"\n[rspamd]\nendpoints = []\n[spamd]\ntimeout = 30\n",
            "spam.engine",
        );
        assert!(e.contains("rspamd.endpoints is empty"), "{e}");
        assert!(e.contains("set spam.engine = \"spamd\""), "{e}");
    }

    #[test]
    fn spam_scanning_switched_off_on_purpose_is_accepted() {
        let c = parse("[spamd]\nendpoints = []\n").unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // Both off: nothing is refused, the unused section is still pointed out.
        let c = parse("[spamd]\nendpoints = []\n[rspamd]\nendpoints = []\n").unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[rspamd] is not used: spam.engine"),
            "{w:?}"
        );
    }

    #[test]
    fn section_of_the_other_engine_is_a_warning() {
        let c = parse("[rspamd]\nendpoints = [\"10.0.0.1:11333\"]\ntimeout = 30\n").unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[rspamd] is not used: spam.engine is \"spamd\""),
            "{w:?}"
        );
        assert!(w[0].contains("set spam.engine = \"rspamd\""), "{w:?}");

        let w = parse("[rspamd]\n").unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[rspamd] is not used: spam.engine"),
            "{w:?}"
        );

        let w = parse("[spam]\nengine = \"rspamd\"\n[spamd]\nendpoints = [\"127.0.0.1:783\"]\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[spamd] is not used: spam.engine is \"rspamd\""),
            "{w:?}"
        );
    }

    #[test]
    fn keys_of_a_switched_off_scanner_are_a_warning() {
        let w = parse("[clamd]\nendpoints = []\ntimeout = 30\non_failure = \"pass\"\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "clamd.on_failure, clamd.timeout are not used: clamd.endpoints is empty"
            ),
            "{w:?}"
        );
        let w = parse("[spamd]\nendpoints = []\nuser = \"amavis\"\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("spamd.user is not used: spamd.endpoints is empty"),
            "{w:?}"
        );
    }

    #[test]
    fn greylist_action_without_use_action_is_a_warning() {
        let pass = "[spam]\nengine = \"rspamd\"\n[rspamd]\ngreylist_action = \"pass\"\n";
        assert!(
            parse(pass).unwrap().warnings().is_empty(),
            "the default changes nothing"
        );
        let base = "[spam]\nengine = \"rspamd\"\n[rspamd]\ngreylist_action = \"tempfail\"\n";
        let w = parse(base).unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("rspamd.greylist_action is not used: rspamd.use_action is false"),
            "{w:?}"
        );
        let with_action = format!("{base}use_action = true\n");
        assert!(parse(&with_action).unwrap().warnings().is_empty());
    }

    #[test]
    fn auth_and_dns_keys_are_checked_by_name() {
        refused("[dns]\nservers = [\"localhost:53\"]\n", "dns.servers");
        refused("[dns]\nattempts = 0\n", "dns.attempts");
        refused("[dns]\ntimeout = 0\n", "dns.timeout");
        let e = refused("[auth.scores]\nSPF_PAS = 1.0\n", "auth.scores");
        assert!(e.contains("SPF_PASS"), "the known rules are listed: {e}");
        refused("[auth.scores]\nSPF_PASS = nan\n", "auth.scores");
        refused("[auth]\nauthserv_id = \"mx example\"\n", "auth.authserv_id");
        let e = parse("[auth]\ndmarc_policy = \"strict\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dmarc_policy") && e.contains("enforce"), "{e}");
        let c = parse("[dns]\nservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n[auth]\ndmarc_policy = \"enforce\"\n[auth.scores]\nSPF_FAIL = 2.5\n").unwrap();
        assert_eq!(c.dns.server_addrs().len(), 2);
        assert_eq!(c.auth.dmarc_policy, DmarcPolicy::Enforce);
        assert!(c.warnings().is_empty());
        let mut h = parse("[server]\nhostname = \"mx.example.com\"\n").unwrap();
        assert_eq!(h.authserv_id(), "mx.example.com");
        h.auth.authserv_id = Some("auth.example.com".into());
        assert_eq!(h.authserv_id(), "auth.example.com");
    }

    #[test]
    fn dns_and_auth_keys_with_auth_off_are_a_warning() {
        let w = parse("[auth]\nenabled = false\ndmarc_policy = \"enforce\"\n[dns]\ntimeout = 2\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("[dns] is not used"), "{w:?}");
        assert!(w[1].starts_with("auth.dmarc_policy is not used"), "{w:?}");
    }
}
