//! DKIM signing of outgoing mail (`[dkim_sign]`): which messages are signed (an originating
//! listener, a client network, a policy bank), with which keys (those of the From domain), and
//! the signature itself, made with mail-auth's streaming signer over exactly the bytes that are
//! reinjected: postsift's rewritten header block, then the body read from the spool in pieces,
//! so a large message is never held in memory to be signed. Also `postsift dkim genkey`'s key
//! pairs and the DNS record to publish.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::common::crypto::{
    Algorithm, DkimKey as AnyKey, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::DkimSigner;
use prometheus::{Histogram, IntCounterVec, Registry};

use crate::config::{self, Config, DkimSign, SignAlgorithm};
use crate::message::Message;

pub use crate::config::DEFAULT_HEADERS;

/// `postsift_dkim_signed_total{result}` values.
pub const RESULTS: &[&str] = &["signed", "no_key", "error"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a PEM private key (PKCS#1 or PKCS#8): {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("{path}: an {found} key, but algorithm = \"{configured}\"")]
    Mismatch {
        path: PathBuf,
        found: &'static str,
        configured: &'static str,
    },
    #[error("{0} exists; --force replaces it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("signing with {domain}/{selector}: {detail}")]
    Sign {
        domain: String,
        selector: String,
        detail: String,
    },
    #[error("reading the message back from the spool: {0}")]
    Spool(io::Error),
}

/// One loaded key: what it signs for and the private key.
pub struct Key {
    pub domain: String,
    pub selector: String,
    key: AnyKey,
}

/// The configured keys by From domain (lower case), loaded when the runtime is built (and by
/// `check-config`, the same way). Clones share them; `Debug` shows names only, never key
/// material.
#[derive(Clone, Default)]
pub struct Keys {
    by_domain: Arc<HashMap<String, Vec<Arc<Key>>>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self
            .by_domain
            .values()
            .flatten()
            .map(|k| format!("{}/{}", k.domain, k.selector))
            .collect();
        names.sort();
        f.debug_tuple("Keys").field(&names).finish()
    }
}

impl Keys {
    /// The keys of `config`'s `[[dkim_sign.keys]]`: a key file that cannot be loaded is an
    /// error of the configuration naming its entry (`dkim_sign.keys[1].key`), so it stops
    /// `check-config`, `run` and a reload alike.
    pub fn configured(config: &Config) -> Result<Keys, config::Error> {
        Keys::load(&config.dkim_sign.keys)
            .map_err(|(i, e)| config.invalid_at(format!("dkim_sign.keys[{i}].key"), e.to_string()))
    }

    /// Loads every entry; on error, the index of the entry that failed.
    pub fn load(entries: &[config::DkimKey]) -> Result<Keys, (usize, Error)> {
        let mut by_domain: HashMap<String, Vec<Arc<Key>>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let key = load_key(&e.key, e.algorithm).map_err(|err| (i, err))?;
            by_domain
                .entry(e.domain.to_ascii_lowercase())
                .or_default()
                .push(Arc::new(Key {
                    domain: e.domain.to_ascii_lowercase(),
                    selector: e.selector.clone(),
                    key,
                }));
        }
        Ok(Keys {
            by_domain: Arc::new(by_domain),
        })
    }

    /// The keys that sign for `domain` (exact match, any case).
    pub fn for_domain(&self, domain: &str) -> &[Arc<Key>] {
        self.by_domain
            .get(&domain.to_ascii_lowercase())
            .map_or(&[], |v| &v[..])
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// Whether one of the keys signs as domain `d` with selector `s` (any case).
    pub fn has(&self, d: &str, s: &str) -> bool {
        let d = d.trim_end_matches('.');
        self.for_domain(d)
            .iter()
            .any(|k| k.selector.eq_ignore_ascii_case(s))
    }
}

/// The `d=` and `s=` tags of a `DKIM-Signature` field (folding whitespace removed from the
/// values, RFC 6376 3.2); None for another field or one without both tags.
fn signature_ids(field: &[u8]) -> Option<(String, String)> {
    let name = crate::message::field_name(field)?;
    if !name.eq_ignore_ascii_case(b"dkim-signature") {
        return None;
    }
    let colon = field.iter().position(|&b| b == b':')?;
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let (mut d, mut s) = (None, None);
    for tag in value.split(';') {
        let Some((k, v)) = tag.split_once('=') else {
            continue;
        };
        let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        match k.trim() {
            "d" => d = Some(v),
            "s" => s = Some(v),
            _ => {}
        }
    }
    Some((d?, s?))
}

/// `header_block` less the `DKIM-Signature` fields made with one of `keys` (a domain and
/// selector postsift signs with): in hybrid mode the milter's signature, which the hop's header
/// edits can break, before the hop signs anew. None when there is none.
pub fn without_own_signatures(header_block: &[u8], keys: &Keys) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(header_block.len());
    let mut removed = false;
    for f in crate::message::fields(header_block) {
        if signature_ids(f).is_some_and(|(d, s)| keys.has(&d, &s)) {
            removed = true;
            continue;
        }
        out.extend_from_slice(f);
    }
    removed.then_some(out)
}

/// Reads a PEM private key of the kind `algorithm` names.
pub fn load_key(path: &Path, algorithm: SignAlgorithm) -> Result<AnyKey, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let pem = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let bad = |detail: String| Error::Key {
        path: path.to_owned(),
        detail,
    };
    // Told apart by trying: a PKCS#8 document may hold either kind.
    let ed = match &der {
        // "maybe unchecked": PKCS#8 v1 (the seed alone, as `openssl genpkey` and `postsift dkim
        // genkey` write it) as well as v2.
        PrivateKeyDer::Pkcs8(p) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).ok()
        }
        _ => None,
    };
    match (algorithm, ed) {
        (SignAlgorithm::Ed25519Sha256, Some(k)) => Ok(AnyKey::Ed25519(k)),
        (SignAlgorithm::RsaSha256, Some(_)) => Err(Error::Mismatch {
            path: path.to_owned(),
            found: "Ed25519",
            configured: algorithm.name(),
        }),
        (SignAlgorithm::Ed25519Sha256, None) => match rsa_bits(&der) {
            Some(_) => Err(Error::Mismatch {
                path: path.to_owned(),
                found: "RSA",
                configured: algorithm.name(),
            }),
            None => Err(bad("not an Ed25519 key".into())),
        },
        (SignAlgorithm::RsaSha256, None) => {
            // ring (mail-auth's crypto backend) signs with RSA keys of 2048 to 8192 bits only;
            // RFC 8301 asks for at least 1024 and recommends 2048. Said here, by size, rather
            // than as ring's bare "key rejected".
            match rsa_bits(&der) {
                None => return Err(bad("not an RSA key".into())),
                Some(bits) if !(2048..=8192).contains(&bits) => {
                    return Err(bad(format!(
                        "an RSA key of {bits} bits; signing keys are 2048 to 8192 bits"
                    )))
                }
                Some(_) => {}
            }
            let k = RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| bad(format!("RSA key refused: {e}")))?;
            Ok(AnyKey::Rsa(k))
        }
    }
}

/// The modulus size of an RSA private key (PKCS#1 or PKCS#8), None when it is not one.
fn rsa_bits(der: &rustls_pki_types::PrivateKeyDer<'_>) -> Option<usize> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = match der {
        rustls_pki_types::PrivateKeyDer::Pkcs1(k) => {
            rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der()).ok()?
        }
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => {
            rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der()).ok()?
        }
        _ => return None,
    };
    Some(key.n().bits())
}

/// mail-auth's signer takes its key by value; this hands it a shared one.
struct SharedKey(Arc<Key>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.key.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.key.algorithm()
    }
}

/// Whether `[dkim_sign]` (a recipient group's effective settings) wants this message signed:
/// signing on, and an originating listener, a client network or a bank says so.
/// `xforward_addr` is XFORWARD ADDR as sent; without it no network matches (the connecting
/// client is Postfix itself, which says nothing about who submitted the mail).
pub fn wanted(c: &DkimSign, listener: Option<SocketAddr>, xforward_addr: Option<&str>) -> bool {
    if !c.enabled {
        return false;
    }
    if let Some(v) = c.by_bank {
        return v;
    }
    let on_listener = listener.is_some_and(|l| c.originating_listeners.contains(&l));
    let client: Option<IpAddr> = xforward_addr
        .map(|a| a.strip_prefix("IPv6:").unwrap_or(a))
        .and_then(|a| a.parse().ok());
    let in_network = client
        .map(|ip| ip.to_canonical())
        .is_some_and(|ip| c.networks.iter().any(|n| n.contains(&ip)));
    on_listener || in_network
}

/// The domain of the message's one From address; None when there is no From field, more than
/// one, or a From with other than exactly one address (RFC 6376 signs for one author).
pub fn from_domain(header_block: &[u8]) -> Option<String> {
    let mut from = None;
    for field in crate::message::fields(header_block) {
        if crate::message::field_name(field).is_some_and(|n| n.eq_ignore_ascii_case(b"from")) {
            if from.is_some() {
                return None;
            }
            from = Some(field);
        }
    }
    let mut one = from?.to_vec();
    one.extend_from_slice(b"\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&one)?;
    let mut addrs = parsed.from()?.iter();
    let addr = addrs.next()?.address.as_deref()?.to_owned();
    if addrs.next().is_some() {
        return None;
    }
    let (local, domain) = addr.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!local.is_empty() && !domain.is_empty()).then_some(domain)
}

/// The `h=` list for a message: the configured names present in `header_block`, once each
/// (mail-auth signs every instance of a name listed), and `From` again to oversign it.
pub fn header_list(c: &DkimSign, header_block: &[u8]) -> Vec<String> {
    let present: Vec<&[u8]> = crate::message::fields(header_block)
        .into_iter()
        .filter_map(crate::message::field_name)
        .collect();
    let mut out: Vec<String> = Vec::new();
    for h in &c.headers {
        let here = present.iter().any(|p| p.eq_ignore_ascii_case(h.as_bytes()));
        if here && !out.iter().any(|o| o.eq_ignore_ascii_case(h)) {
            out.push(h.clone());
        }
    }
    if c.oversign_from {
        // Listed once more than it occurs: mail-auth adds a name it did not find at the end.
        out.push("From".into());
    }
    out
}

/// What signing one copy gave.
pub enum Signed {
    /// `DKIM-Signature:` fields to put on top, one per key, and the domain.
    Signed { headers: Vec<u8>, domain: String },
    /// Not for signing: no single From address, or no key for its domain.
    NoKey,
}

/// Signs one copy with `keys`: `header_block` (postsift's rewritten header section, with the blank line if
/// it adds one) and the rest of `msg` after its original header section, exactly what
/// reinjection sends. Runs on the blocking pool: the body may be read from the spool file.
pub async fn sign(
    c: &DkimSign,
    keys: &Keys,
    header_block: &[u8],
    msg: &Message,
) -> Result<Signed, Error> {
    let Some(domain) = from_domain(msg_headers(header_block)) else {
        return Ok(Signed::NoKey);
    };
    let keys: Vec<Arc<Key>> = keys.for_domain(&domain).to_vec();
    if keys.is_empty() {
        return Ok(Signed::NoKey);
    }
    let names = header_list(c, msg_headers(header_block));
    let block = header_block.to_vec();
    let body = msg.reader_from(msg.header_end()).map_err(Error::Spool)?;
    let headers = tokio::task::spawn_blocking(move || sign_blocking(&keys, &names, &block, body))
        .await
        .map_err(|e| Error::Sign {
            domain: domain.clone(),
            selector: "-".into(),
            detail: e.to_string(),
        })??;
    Ok(Signed::Signed { headers, domain })
}

/// The header fields of a header block (the part before a blank line, if it has one).
fn msg_headers(block: &[u8]) -> &[u8] {
    match block.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &block[..p + 2],
        None => block,
    }
}

fn sign_blocking(
    keys: &[Arc<Key>],
    names: &[String],
    block: &[u8],
    mut body: impl Read,
) -> Result<Vec<u8>, Error> {
    let failed = |k: &Key, detail: String| Error::Sign {
        domain: k.domain.clone(),
        selector: k.selector.clone(),
        detail,
    };
    let signers: Vec<_> = keys
        .iter()
        .map(|k| {
            DkimSigner::from_key(SharedKey(k.clone()))
                .domain(k.domain.clone())
                .selector(k.selector.clone())
                .headers(names.iter().cloned())
        })
        .collect();
    let mut streams: Vec<_> = signers.iter().map(|s| s.sign_streaming()).collect();
    for s in &mut streams {
        s.write(block);
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Spool(e)),
        };
        for s in &mut streams {
            s.write(&buf[..n]);
        }
    }
    let mut out = Vec::new();
    // In key order, the first on top; verifiers check each on its own.
    for (s, k) in streams.into_iter().zip(keys) {
        let sig = s.finish().map_err(|e| failed(k, e.to_string()))?;
        out.extend_from_slice(sig.to_header().as_bytes());
    }
    Ok(out)
}

/// `postsift_dkim_signed_total{result}` and `postsift_dkim_sign_duration_seconds`.
#[derive(Clone)]
pub struct SignMetrics {
    /// Copies considered for signing (outgoing, signing on), by result: signed, no_key (no
    /// single From address, or no key for its domain), error.
    pub signed: IntCounterVec,
    /// Time to sign one copy (body read from the spool and hashed, and the signatures).
    pub duration: Histogram,
}

impl SignMetrics {
    pub fn register(r: &Registry) -> SignMetrics {
        SignMetrics {
            signed: crate::metrics::counter(
                r,
                "postsift_dkim_signed_total",
                "Outgoing message copies considered for DKIM signing, by result (signed, no_key, error)",
                &["result"],
                &[RESULTS],
            ),
            duration: crate::metrics::histogram(
                r,
                "postsift_dkim_sign_duration_seconds",
                "Time to DKIM-sign one message copy",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
        }
    }
}

/// A new key pair for `postsift dkim genkey`.
pub struct Generated {
    /// The private key, PEM (PKCS#8).
    pub pem: String,
    /// The TXT record's data: `v=DKIM1; k=rsa; p=…`.
    pub record: String,
}

/// Makes a key pair: RSA of `bits` (2048–4096) or Ed25519.
pub fn generate(algorithm: SignAlgorithm, bits: usize) -> Result<Generated, Error> {
    use base64::Engine as _;
    use rsa::pkcs8::der::pem::LineEnding;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let gen = |e: &dyn fmt::Display| Error::Generate(e.to_string());
    match algorithm {
        SignAlgorithm::RsaSha256 => {
            if !(2048..=4096).contains(&bits) {
                return Err(Error::Generate(format!(
                    "--bits {bits}: RSA keys of 2048 to 4096 bits (the signer's range; 2048 recommended)"
                )));
            }
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).map_err(|e| gen(&e))?;
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| gen(&e))?;
            // SubjectPublicKeyInfo, as opendkim-genkey publishes it (and every verifier reads).
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| gen(&e))?;
            Ok(Generated {
                pem: pem.to_string(),
                record: format!("v=DKIM1; k=rsa; p={}", b64(spki.as_bytes())),
            })
        }
        SignAlgorithm::Ed25519Sha256 => {
            let v2 = Ed25519Key::generate_pkcs8().map_err(|e| gen(&e))?;
            let public = Ed25519Key::from_pkcs8_der(&v2)
                .map_err(|e| gen(&e))?
                .public_key();
            // ed25519-dalek writes PKCS#8 v2 (RFC 5958, with the public key), which OpenSSL
            // 3.0 cannot read: the key file is v1 (RFC 8410), the seed alone, as `openssl
            // genpkey` writes it.
            let seed = match (v2.get(5..16), v2.get(16..48)) {
                (Some(head), Some(seed)) if head == &ED25519_PKCS8_V1[5..] => seed,
                _ => {
                    return Err(Error::Generate(
                        "unexpected PKCS#8 from ed25519-dalek".into(),
                    ))
                }
            };
            let der = [&ED25519_PKCS8_V1[..], seed].concat();
            let pem = rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
                .map_err(|e| gen(&e))?;
            Ok(Generated {
                pem,
                // RFC 8463: the raw 32-byte public key.
                record: format!("v=DKIM1; k=ed25519; p={}", b64(&public)),
            })
        }
    }
}

/// An Ed25519 PKCS#8 v1 document up to its 32-byte seed: SEQUENCE, version 0, the algorithm
/// id-Ed25519, OCTET STRING holding an OCTET STRING of 32.
const ED25519_PKCS8_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Writes `pem` to `path`, mode 0600, refusing to replace a file unless `force`.
pub fn write_key(path: &Path, pem: &str, force: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let w = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = o.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Error::Exists(path.to_owned()),
        _ => w(e),
    })?;
    // A replaced file keeps its old mode: make it 0600 too.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(w)?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(w)
}

/// The zone-file line to publish: `S._domainkey.D. IN TXT ( "…" "…" )`, the data cut into
/// strings of at most 255 bytes (RFC 1035's limit for one character-string).
pub fn txt_record(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{}. IN TXT ( {} )",
        domain.trim_end_matches('.'),
        strings.join("\n\t")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DkimSign {
        DkimSign {
            enabled: true,
            originating_listeners: vec!["127.0.0.1:10026".parse().unwrap()],
            networks: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..DkimSign::default()
        }
    }

    #[test]
    fn which_messages_are_outgoing() {
        let c = cfg();
        let orig = Some("127.0.0.1:10026".parse().unwrap());
        let inbound = Some("127.0.0.1:10024".parse().unwrap());
        assert!(wanted(&c, orig, None));
        assert!(!wanted(&c, inbound, None));
        assert!(wanted(&c, inbound, Some("192.0.2.7")));
        assert!(wanted(&c, inbound, Some("IPv6:2001:db8::1")));
        assert!(wanted(&c, inbound, Some("::ffff:192.0.2.7")));
        assert!(!wanted(&c, inbound, Some("198.51.100.1")));
        assert!(!wanted(&c, inbound, Some("[UNAVAILABLE]")));
        let mut off = c.clone();
        off.enabled = false;
        assert!(!wanted(&off, orig, None));
        let mut bank = c.clone();
        bank.by_bank = Some(false);
        assert!(!wanted(&bank, orig, None));
        bank.by_bank = Some(true);
        assert!(wanted(&bank, inbound, Some("198.51.100.1")));
    }

    #[test]
    fn the_one_from_address_gives_the_domain() {
        let d = |h: &str| from_domain(h.as_bytes());
        assert_eq!(
            d("Subject: x\r\nFrom: Ann <ann@Example.COM>\r\n"),
            Some("example.com".into())
        );
        assert_eq!(d("from: ann@example.com\r\n"), Some("example.com".into()));
        assert_eq!(
            d("From: \"a@evil.test\" <ann@example.com>\r\n"),
            Some("example.com".into())
        );
        assert_eq!(d("Subject: no from\r\n"), None);
        assert_eq!(d("From: a@x.test, b@y.test\r\n"), None);
        assert_eq!(d("From: a@x.test\r\nFrom: b@y.test\r\n"), None);
        assert_eq!(d("From: undisclosed\r\n"), None);
    }

    #[test]
    fn header_list_has_what_is_there_and_from_once_more() {
        let c = cfg();
        let h = b"Received: x\r\nSubject: s\r\nFrom: a@b.test\r\nTo: c@d.test\r\nTo: e@f.test\r\nList-Id: <l.test>\r\n";
        assert_eq!(
            header_list(&c, h),
            ["From", "To", "Subject", "List-Id", "From"]
        );
    }

    /// From the config's `dkim_sign_that_signs_nothing_warns`, moved here with the key loading.
    #[test]
    fn a_key_file_that_cannot_be_read_is_named_by_its_entry() {
        let parse = |t: &str| Config::parse(t, std::path::Path::new("test.toml"));
        let c = parse(
            "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"/nonexistent\"\n",
        )
        .unwrap();
        let e = Keys::configured(&c).unwrap_err().to_string();
        assert!(
            e.contains("`dkim_sign.keys[0].key`") && e.contains("/nonexistent"),
            "{e}"
        );
    }

    #[test]
    fn only_signatures_made_with_our_keys_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ed.pem");
        let g = generate(SignAlgorithm::Ed25519Sha256, 0).unwrap();
        write_key(&path, &g.pem, false).unwrap();
        let keys = Keys::load(&[config::DkimKey {
            domain: "Example.COM".into(),
            selector: "ed".into(),
            key: path,
            algorithm: SignAlgorithm::Ed25519Sha256,
        }])
        .unwrap();
        let block =
            b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n s=ed; bh=x; b=y\r\n\
dkim-signature: v=1; d=example.com.; s=ED; b=z\r\n\
DKIM-Signature: v=1; d=example.com; s=other; b=z\r\n\
DKIM-Signature: v=1; d=example.org; s=ed; b=z\r\n\
From: a@example.com\r\n\r\n";
        let out = without_own_signatures(block, &keys).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DKIM-Signature: v=1; d=example.com; s=other; b=z\r\n\
DKIM-Signature: v=1; d=example.org; s=ed; b=z\r\n\
From: a@example.com\r\n\r\n"
        );
        assert!(without_own_signatures(b"From: a@example.com\r\n", &keys).is_none());
    }

    #[test]
    fn txt_record_strings_are_at_most_255_bytes() {
        let data = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
        let r = txt_record("example.com", "s1", &data);
        assert!(
            r.starts_with("s1._domainkey.example.com. IN TXT ( \""),
            "{r}"
        );
        let strings: Vec<&str> = r.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.concat(), data);
        assert!(strings.iter().all(|s| s.len() <= 255));
    }

    #[test]
    fn generated_keys_load_back_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        for (alg, bits) in [
            (SignAlgorithm::Ed25519Sha256, 0),
            (SignAlgorithm::RsaSha256, 2048),
        ] {
            let g = generate(alg, bits).unwrap();
            let path = dir.path().join(format!("{}.pem", alg.name()));
            write_key(&path, &g.pem, false).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert!(matches!(
                write_key(&path, &g.pem, false),
                Err(Error::Exists(_))
            ));
            write_key(&path, &g.pem, true).unwrap();
            load_key(&path, alg).unwrap();
            let other = match alg {
                SignAlgorithm::RsaSha256 => SignAlgorithm::Ed25519Sha256,
                SignAlgorithm::Ed25519Sha256 => SignAlgorithm::RsaSha256,
            };
            assert!(matches!(
                load_key(&path, other),
                Err(Error::Mismatch { .. })
            ));
        }
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        assert!(matches!(
            load_key(&dir.path().join("junk.pem"), SignAlgorithm::RsaSha256),
            Err(Error::Pem { .. })
        ));
    }
}
