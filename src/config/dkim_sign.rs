//! `[dkim_sign]`: which outgoing mail is DKIM-signed, and the `[[dkim_sign.keys]]` it is signed
//! with. Only the entries are checked here; the key files are read where the runtime is built
//! (`sign::Keys`), which names a bad one as `dkim_sign.keys[i].key`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::check::{Check, Error};

/// The header fields signed by default, when present: what carries the message's meaning to its
/// reader, and the mailing-list fields (RFC 6376 5.4.1's recommendation, as opendkim signs).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

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

/// `[dkim_sign]`: DKIM signatures on outgoing mail (signed by the `sign` module). A message is signed
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
    /// Set by a policy bank's `dkim_sign` (`Config::effective`), never by the file.
    #[serde(skip)]
    pub by_bank: Option<bool>,
}

impl Default for DkimSign {
    fn default() -> Self {
        DkimSign {
            enabled: false,
            originating_listeners: Vec::new(),
            networks: Vec::new(),
            on_error: SignOnError::Pass,
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            oversign_from: true,
            keys: Vec::new(),
            by_bank: None,
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

impl DkimSign {
    /// `listen` is `server.listen`, where an originating listener must be.
    pub(super) fn validate(&self, check: Check, listen: &[SocketAddr]) -> Result<(), Error> {
        let d = self;
        if let Some(l) = d.originating_listeners.iter().find(|l| !listen.contains(l)) {
            return Err(check.bad(
                "dkim_sign.originating_listeners",
                format!("{l} is not in server.listen, so no mail arrives there"),
            ));
        }
        if let Some(h) = d
            .headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(check.bad(
                "dkim_sign.headers",
                format!("{h:?} is not a header field name"),
            ));
        }
        if !d.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(check.bad("dkim_sign.headers", "must include From (RFC 6376 5.4)"));
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
                return Err(check.at(name("domain"), format!("{:?} is not a domain", k.domain)));
            }
            if !domain_ok(&k.selector) {
                return Err(check.at(
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
                return Err(check.at(
                    name("selector"),
                    format!("{}/{} is configured twice", k.domain, k.selector),
                ));
            }
        }
        Ok(())
    }

    /// `[dkim_sign]` written so that nothing is ever signed; `by_bank`: a policy bank says
    /// `dkim_sign = true`.
    pub(super) fn warnings(&self, by_bank: bool) -> Vec<String> {
        let d = self;
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
}
