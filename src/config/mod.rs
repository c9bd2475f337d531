//! The TOML configuration: plain data, one file per section, each with its schema (serde,
//! unknown keys rejected), the documented default of every field and its `validate()`; here the
//! whole file and the load → parse → validate sequence that runs before anything binds a
//! socket. `postsift.example.toml` at the top of the repository mirrors these files, key for
//! key. Imports nothing else of the crate: what the runtime loads from the configuration (DKIM
//! keys, whitelists, stores) is loaded where the runtime is built.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod auth;
pub mod banks;
pub mod banned;
pub mod cache;
mod check;
pub mod dkim_sign;
pub mod dns;
pub mod greylist;
pub mod health;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod milter;
pub mod parts;
pub mod policy;
pub mod quarantine;
pub mod reinject;
pub mod scanners;
pub mod server;
pub mod sql;

pub use auth::{Auth, DmarcPolicy};
pub use banks::{Bank, BankBanned, BankMatch, BankParts, BankSpam, BankVirus};
pub use banned::{Banned, BannedRule};
pub use cache::Cache;
pub use check::Error;
use check::{Check, Present};
pub use dkim_sign::{DkimKey, DkimSign, SignAlgorithm, SignOnError, DEFAULT_HEADERS};
pub use dns::Dns;
pub use greylist::{Greylist, RetryWindow};
pub use health::Health;
pub use listen::PolicyListen;
pub use log::{Log, LogFormat};
pub use metrics::Metrics;
pub use milter::Milter;
pub use parts::{Parts, Unchecked};
pub use policy::{Action, Headers, Spam, SpamEngine, Virus};
pub use quarantine::Quarantine;
pub use reinject::Reinject;
pub use scanners::{Clamd, OnFailure, Rspamd, Spamd};
pub use server::Server;
pub use sql::{SqlConfig, SqlConfigError};

/// Where `postsift run` looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/postsift/postsift.toml";

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
    /// `[milter]`: the before-queue front end (off unless `listen` is set).
    pub milter: Milter,
    pub quarantine: Quarantine,
    pub dns: Dns,
    pub auth: Auth,
    pub dkim_sign: DkimSign,
    /// `[sql]`: amavis's SQL database (message log, per-user lookups). Default: none.
    pub sql: SqlConfig,
    pub cache: Cache,
    /// `[[policy]]`: policy banks, applied in order on top of the settings above
    /// ([`Config::effective`]; which apply to a message is the `banks` module's business).
    /// Default: none.
    pub policy: Vec<Bank>,
    /// The keys written in the file, section by section (`"rspamd"` → `{"endpoints", …}`); empty
    /// for the built-in defaults. Serde fills every absent key with its default, so this is the
    /// only record of what the administrator actually configured: the spam-engine check and
    /// [`Config::warnings`] need it to tell a section left out from one written and then unused.
    #[serde(skip)]
    present: Present,
    /// The file it was read from (empty for the built-in defaults), to name it in errors found
    /// after the load, such as a DKIM key file that cannot be read ([`Config::invalid_at`]).
    #[serde(skip)]
    path: PathBuf,
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
        config.path = path.to_owned();
        Ok(config)
    }

    /// Refuses what cannot work. Each check names exactly one key, the one to change.
    fn validate(&self, path: &Path) -> Result<(), Error> {
        let check = Check { path };
        self.server.validate(check)?;
        self.reinject.validate(check)?;
        self.clamd.validate(check)?;
        self.spamd.validate(check)?;
        self.rspamd.validate(check)?;
        self.parts.validate(check)?;
        self.greylist.validate(check)?;
        self.milter.validate(check)?;
        self.validate_banks(check)?;
        self.quarantine.validate(check)?;
        self.quarantine.validate_store(check, &self.sql.url)?;
        self.spam.validate(check)?;
        self.dns.validate(check)?;
        self.auth.validate(check)?;
        self.dkim_sign.validate(check, &self.server.listen)?;
        self.metrics.validate(check)?;
        self.health.validate(check)?;
        self.sql.validate_in(check)?;
        self.cache.validate(check)?;
        scanners::validate_engine(
            check,
            &self.present,
            self.spam.engine,
            &self.spamd,
            &self.rspamd,
        )
    }

    /// Each bank on its own, then with the levels in effect where it applies.
    fn validate_banks(&self, check: Check) -> Result<(), Error> {
        let mut names = BTreeSet::new();
        for (i, b) in self.policy.iter().enumerate() {
            b.validate(check, i, &self.server.listen, &mut names)?;
            let e = self.effective(&[i]);
            if e.spam.tag2_level < e.spam.tag_level {
                return Err(b.refused(
                    check,
                    i,
                    "policy.spam.tag2_level",
                    "is below the tag_level in effect for this bank",
                ));
            }
        }
        Ok(())
    }

    /// The settings in effect under `banks` (indices into `config.policy`, applied in that
    /// order): each bank's keys laid over the top-level settings. A bypass switches the scanner
    /// off in the result, as if it had no endpoints.
    pub fn effective(&self, banks: &[usize]) -> Config {
        let mut c = self.clone();
        for &i in banks {
            self.policy[i].lay_over(
                &mut c.spam,
                &mut c.virus,
                &mut c.banned,
                &mut c.parts,
                &mut c.dkim_sign,
            );
        }
        // The last bank that says anything about a bypass decides.
        let bypass = |f: fn(&Bank) -> Option<bool>| {
            banks
                .iter()
                .rev()
                .find_map(|&i| f(&self.policy[i]))
                .unwrap_or(false)
        };
        if bypass(|b| b.bypass_virus_checks) {
            c.clamd.endpoints.clear();
        }
        if bypass(|b| b.bypass_spam_checks) {
            c.spamd.endpoints.clear();
            c.rspamd.endpoints.clear();
        }
        c.policy.clear();
        c
    }

    /// An error about `key` of this file found after the load, by what the runtime builds from
    /// it (a DKIM key file that cannot be read: `dkim_sign.keys[1].key`).
    pub fn invalid_at(&self, key: String, message: impl Into<String>) -> Error {
        Check { path: &self.path }.at(key, message)
    }

    /// What the file configures that postsift will not use: each message names the unused key
    /// (or section) and the key that makes it unused. Not errors: the configuration works, and
    /// keeping a section for a later switch is legitimate. `check-config` prints them and still
    /// exits 0; `run` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let allow = &self.server.allow_networks;
        let mut out: Vec<String> = (self.policy.iter())
            .filter_map(|b| b.postfix_warning(allow))
            .collect();
        let engine = self.spam.engine;
        out.extend(scanners::warnings(
            &self.present,
            engine,
            &self.clamd,
            &self.spamd,
            &self.rspamd,
        ));
        out.extend(self.auth.warnings(&self.present));
        out.extend(self.rspamd.warning(engine));
        let by_bank = self.policy.iter().any(|b| b.dkim_sign == Some(true));
        out.extend(self.dkim_sign.warnings(by_bank));
        out.extend(self.parts.size_warning(self.server.max_message_size));
        out
    }

    /// Whether anything can put a message into the quarantine or release one from it: only
    /// then is `[quarantine] dir` opened (and created).
    pub fn uses_quarantine(&self) -> bool {
        let q = Action::Quarantine;
        self.virus.action == q
            || self.banned.action == q
            || self.spam.action == q
            || self.spam.quarantine_level.is_some()
            || self
                .parts
                .unchecked_actions()
                .contains(&Unchecked::Quarantine)
            || !self.quarantine.release_listen.is_empty()
            || self.policy.iter().any(Bank::quarantines)
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
    fn worker_threads_default_to_half_the_cpus_rounded_up_and_a_setting_wins() {
        let server = |t: &str| parse(t).unwrap().server;
        let auto = server("");
        assert_eq!(auto.worker_threads, 0);
        let got: Vec<usize> = [1, 2, 3, 4, 16].map(|cpus| auto.workers(cpus)).to_vec();
        assert_eq!(got, [1, 1, 2, 2, 8]);
        assert_eq!(server("[server]\nworker_threads = 3\n").workers(2), 3);
        assert!(parse("[server]\nworker_threads = 5000\n")
            .unwrap_err()
            .to_string()
            .contains("server.worker_threads"));
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
        // The key file itself is read where the runtime is built: see sign's
        // a_key_file_that_cannot_be_read_is_named_by_its_entry.
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
    fn side_service_listeners_and_socket_modes_are_named() {
        for (toml, key) in [
            ("[milter]\nlisten = [\"sock\"]\n", "milter.listen"),
            ("[milter]\nsocket_mode = \"0999\"\n", "milter.socket_mode"),
            ("[greylist]\nlisten = [\"unix:rel\"]\n", "greylist.listen"),
            (
                "[greylist]\nsocket_mode = \"1777\"\n",
                "greylist.socket_mode",
            ),
        ] {
            let e = parse(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
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
