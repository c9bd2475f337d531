//! Mail authentication, one more check beside clamd and the spam engine: SPF (MAIL FROM and
//! HELO, with the original client's address and HELO from XFORWARD), every DKIM signature,
//! DMARC for the From domain, and the ARC chain, verified with mail-auth against the shared
//! resolver and cache of [`crate::dns`]. The answer is an owned [`AuthReport`]: what
//! `Authentication-Results` says (rendered by `rewrite`), the SpamAssassin-named rules it scores
//! ([`rules`]), and what DMARC enforcement needs (`policy`).
//!
//! Never a failure of the message: a DNS problem or a method that runs out of `[auth] timeout`
//! gives that method `temperror`, and the message goes on. mail-auth's verdicts are kept as it
//! reports them, with the reason alongside (a body-hash mismatch and an expired signature are
//! `neutral`, a missing key `permerror`); postsift adds one rule of its own, RFC 8301's: a
//! signature verified with an RSA key under 1024 bits is `policy`, not `pass`.
//!
//! DMARC is mail-auth 0.13's, which follows DMARCbis (RFC 9989): the policy record is found by
//! a tree walk, `sp=`/`np=` apply to subdomains, and `pct=` is gone (its `t=y` testing flag
//! lowers the policy one step instead); p=, sp= and t= are reported.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, DnsError, Error as MaError, Parameters,
    RecordSet, SpfOutput, SpfResult, Txt, MX,
};

use crate::config::Config;
use crate::dns::{self, Lookups, Resolver, View};
pub use crate::scan::auth_metrics::{AuthMetrics, AUTH_METHODS, AUTH_RESULTS};

/// The rules postsift scores, with their default scores: a table of the configuration, since
/// `[auth.scores]` names them.
pub use crate::config::auth::RULES;
/// A method's result, in RFC 8601's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    /// Verified, but refused by local policy (a DKIM key too short).
    Policy,
    None,
    TempError,
    PermError,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::Policy => "policy",
            Verdict::None => "none",
            Verdict::TempError => "temperror",
            Verdict::PermError => "permerror",
        }
    }

    fn from_spf(r: SpfResult) -> Verdict {
        match r {
            SpfResult::Pass => Verdict::Pass,
            SpfResult::Fail => Verdict::Fail,
            SpfResult::SoftFail => Verdict::SoftFail,
            SpfResult::Neutral => Verdict::Neutral,
            SpfResult::TempError => Verdict::TempError,
            SpfResult::PermError => Verdict::PermError,
            SpfResult::None => Verdict::None,
        }
    }
}

/// One SPF identity's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Spf {
    pub result: Verdict,
    /// The identity checked: the MAIL FROM address, or the HELO name.
    pub identity: String,
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Dkim {
    pub result: Verdict,
    /// Why it is not a pass, in a few words (None for a pass).
    pub reason: Option<String>,
    /// d=, s= and the first 8 characters of b= (empty for a signature too broken to read).
    pub domain: String,
    pub selector: String,
    pub b: String,
}

/// A DMARC policy as the record gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicyKind {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicyKind {
    pub fn label(self) -> &'static str {
        match self {
            DmarcPolicyKind::None => "none",
            DmarcPolicyKind::Quarantine => "quarantine",
            DmarcPolicyKind::Reject => "reject",
        }
    }

    fn from(p: Policy) -> DmarcPolicyKind {
        match p {
            Policy::Quarantine => DmarcPolicyKind::Quarantine,
            Policy::Reject => DmarcPolicyKind::Reject,
            Policy::None | Policy::Unspecified => DmarcPolicyKind::None,
        }
    }
}

/// The DMARC result for the From domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Dmarc {
    pub result: Verdict,
    /// The RFC5322.From domain (empty: none found).
    pub domain: String,
    /// The policy that applies to this domain (p=, or sp=/np= for a subdomain, lowered one step
    /// by t=y); None without a record.
    pub policy: Option<DmarcPolicyKind>,
    /// The record's p= and sp=, and whether it says t=y.
    pub p: Option<DmarcPolicyKind>,
    pub sp: Option<DmarcPolicyKind>,
    pub testing: bool,
}

/// The ARC chain's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Arc {
    pub result: Verdict,
    /// The newest ARC-Seal's d= and i= (the last forwarder), when there is a chain.
    pub sealer: Option<(String, u32)>,
}

/// Everything the authentication check found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthReport {
    /// SPF for MAIL FROM (None: not checked, or a null sender).
    pub spf: Option<Spf>,
    /// SPF for the HELO name (None: not checked, or no HELO).
    pub spf_helo: Option<Spf>,
    /// Why SPF was not checked at all.
    pub spf_skipped: Option<&'static str>,
    /// Why DKIM, DMARC and ARC were not checked (a message too large, or not parseable).
    pub message_skipped: Option<&'static str>,
    /// One per signature; None: DKIM not checked.
    pub dkim: Option<Vec<Dkim>>,
    pub dmarc: Option<Dmarc>,
    pub arc: Option<Arc>,
    /// The MAIL FROM domain (for DKIM_VALID_EF).
    pub envelope_domain: String,
    pub time: Duration,
}

impl AuthReport {
    /// DKIM results `Authentication-Results` leaves out when it shows at most `max`.
    pub fn dkim_results_omitted(&self, max: usize) -> usize {
        self.dkim
            .as_ref()
            .map_or(0, |s| s.len().saturating_sub(max))
    }
}

/// The original client, as XFORWARD gave it: never postsift's own peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub helo: Option<String>,
    pub mail_from: String,
}

impl Client {
    /// From XFORWARD ADDR (Postfix writes `IPV6:` before an IPv6 address; `[UNAVAILABLE]` is no
    /// address) and HELO.
    pub fn from_xforward(addr: Option<&str>, helo: Option<&str>, mail_from: &str) -> Client {
        let ip = addr.and_then(|a| {
            let a = a
                .strip_prefix("IPV6:")
                .or_else(|| a.strip_prefix("ipv6:"))
                .unwrap_or(a);
            a.parse().ok()
        });
        let helo = helo
            .filter(|h| !h.is_empty() && *h != "[UNAVAILABLE]")
            .map(str::to_owned);
        Client {
            ip,
            helo,
            mail_from: mail_from.to_owned(),
        }
    }
}

/// The configured checker.
pub struct Checker {
    resolver: Resolver,
    spf: bool,
    dkim: bool,
    dmarc: bool,
    arc: bool,
    /// The receiving host, for SPF's `%{r}` macro.
    hostname: String,
    timeout: Duration,
    max_message_size: u64,
    /// `auth.max_dkim_results`: more are counted as omitted from the header.
    max_dkim_results: usize,
}

/// The cache views of one method's check, for mail-auth's `Parameters`.
struct Views<'a> {
    txt: View<'a, Box<str>, Txt>,
    mx: View<'a, Box<str>, RecordSet<MX>>,
    ipv4: View<'a, Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: View<'a, Box<str>, RecordSet<Ipv6Addr>>,
    ptr: View<'a, IpAddr, RecordSet<Box<str>>>,
}

impl<'a> Views<'a> {
    fn of(l: &'a Lookups<'a>) -> Views<'a> {
        Views {
            txt: l.txt(),
            mx: l.mx(),
            ipv4: l.ipv4(),
            ipv6: l.ipv6(),
            ptr: l.ptr(),
        }
    }
}

type Cached<'x, P> = Parameters<
    'x,
    P,
    View<'x, Box<str>, Txt>,
    View<'x, Box<str>, RecordSet<MX>>,
    View<'x, Box<str>, RecordSet<Ipv4Addr>>,
    View<'x, Box<str>, RecordSet<Ipv6Addr>>,
    View<'x, IpAddr, RecordSet<Box<str>>>,
>;

fn cached<'x, P>(p: P, v: &'x Views<'x>) -> Cached<'x, P> {
    Parameters::new(p)
        .with_txt_cache(&v.txt)
        .with_mx_cache(&v.mx)
        .with_ipv4_cache(&v.ipv4)
        .with_ipv6_cache(&v.ipv6)
        .with_ptr_cache(&v.ptr)
}

impl Checker {
    /// None when `[auth]` is off; an error when no resolver can be built.
    pub fn new(config: &Config) -> Result<Option<Checker>, dns::Error> {
        let a = &config.auth;
        if !a.enabled {
            return Ok(None);
        }
        Ok(Some(Checker {
            resolver: Resolver::new(&config.dns, &config.health)?,
            spf: a.spf,
            dkim: a.dkim,
            dmarc: a.dmarc,
            arc: a.arc,
            hostname: config.hostname(),
            timeout: Duration::from_secs(a.timeout),
            max_message_size: a.max_message_size,
            max_dkim_results: a.max_dkim_results,
        }))
    }

    /// Larger messages are checked with SPF only (call [`Checker::check`] with an empty
    /// message).
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// The shared resolver (its cache, for tests and `postsift scan`).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Every enabled method on `raw` (the whole message as received); an empty `raw` (a message
    /// over `max_message_size`) gets SPF only.
    pub async fn check(&self, raw: &[u8], client: &Client, metrics: &AuthMetrics) -> AuthReport {
        let start = Instant::now();
        // The resolver marked down: a deadline already past, so every method that needs a
        // query gives temperror at once, and what the cache holds still counts.
        let deadline = match self.resolver.admit() {
            true => tokio::time::Instant::now() + self.timeout,
            false => tokio::time::Instant::now(),
        };
        let a = &self.resolver.authenticator;
        let parsed = if raw.is_empty() {
            None
        } else {
            AuthenticatedMessage::parse(raw)
        };
        let dm = &metrics.dns;
        let sender = client.mail_from.as_str();
        let envelope_domain = sender
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();

        // A loopback client is a local submission (or postsift's own hop): SPF says nothing
        // about it, and a fail there would only be noise.
        let spf_skipped = match (self.spf, client.ip) {
            (false, _) => None,
            (true, None) => Some("no client address from XFORWARD ADDR"),
            (true, Some(ip)) if ip.is_loopback() => Some("client address is loopback"),
            (true, Some(_)) => None,
        };
        let spf_ip = client.ip.filter(|_| self.spf && spf_skipped.is_none());
        let helo = client.helo.as_deref().unwrap_or("");
        let spf_mail = async {
            let ip = spf_ip.filter(|_| !sender.is_empty())?;
            let l = self.resolver.lookups(dm);
            let v = Views::of(&l);
            let p = SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender);
            let out = tokio::time::timeout_at(deadline, a.verify_spf(cached(p, &v))).await;
            Some(out.unwrap_or_else(|_| SpfOutput::default().with_result(SpfResult::TempError)))
        };
        let spf_helo = async {
            let ip = spf_ip.filter(|_| !helo.is_empty())?;
            let l = self.resolver.lookups(dm);
            let v = Views::of(&l);
            let p = SpfParameters::verify_ehlo(ip, helo, &self.hostname);
            let out = tokio::time::timeout_at(deadline, a.verify_spf(cached(p, &v))).await;
            Some(out.unwrap_or_else(|_| SpfOutput::default().with_result(SpfResult::TempError)))
        };
        // mail-auth's DKIM outputs borrow the cache views: these live to the end.
        let dkim_lookups = self.resolver.lookups(dm);
        let dkim_views = Views::of(&dkim_lookups);
        let dkim = async {
            let m = parsed.as_ref().filter(|_| self.dkim)?;
            Some(tokio::time::timeout_at(deadline, a.verify_dkim(cached(m, &dkim_views))).await)
        };
        let arc = self.arc(parsed.as_ref(), deadline, dm);
        let dmarc_prefetch = self.dmarc_prefetch(parsed.as_ref(), deadline, dm);
        let (spf_mail, spf_helo, dkim_out, arc, ()) =
            tokio::join!(spf_mail, spf_helo, dkim, arc, dmarc_prefetch);

        // DKIM: mail-auth's outputs borrow the message; the report keeps owned values.
        let dkim_timed_out = matches!(dkim_out, Some(Err(_)));
        let dkim_outputs = match dkim_out {
            Some(Ok(v)) => v,
            _ => Vec::new(),
        };
        let dkim = self.dkim_report(self.dkim && parsed.is_some(), dkim_timed_out, &dkim_outputs);

        // DMARC: the MAIL FROM identity's SPF result (the HELO's for a null sender), and the
        // DKIM results, aligned with the From domain.
        let dmarc = match parsed.as_ref().filter(|_| self.dmarc) {
            None => None,
            Some(m) => {
                let (spf_for_dmarc, spf_domain) = if sender.is_empty() {
                    (spf_helo.clone(), helo.to_owned())
                } else {
                    (spf_mail.clone(), envelope_domain.clone())
                };
                let spf_for_dmarc = spf_for_dmarc.unwrap_or_default();
                let l = self.resolver.lookups(dm);
                let v = Views::of(&l);
                let p = DmarcParameters::new(m, &dkim_outputs, &spf_domain, &spf_for_dmarc);
                let out = tokio::time::timeout_at(deadline, a.verify_dmarc(cached(p, &v))).await;
                Some(match out {
                    Err(_) => Dmarc {
                        result: Verdict::TempError,
                        domain: from_domain(m),
                        policy: None,
                        p: None,
                        sp: None,
                        testing: false,
                    },
                    Ok(o) => {
                        let spf_temp = spf_for_dmarc.result() == SpfResult::TempError;
                        dmarc_result(&o, spf_temp)
                    }
                })
            }
        };

        let spf = spf_mail.map(|o| Spf {
            result: Verdict::from_spf(o.result()),
            identity: bounded(sender),
        });
        let spf_helo = spf_helo.map(|o| Spf {
            result: Verdict::from_spf(o.result()),
            identity: bounded(helo),
        });
        let message_skipped = match (&parsed, raw.is_empty()) {
            (Some(_), _) => None,
            (None, true) => Some("message over auth.max_message_size"),
            (None, false) => Some("message not parseable"),
        };
        let report = AuthReport {
            spf,
            spf_helo,
            spf_skipped,
            message_skipped,
            dkim,
            dmarc,
            arc,
            envelope_domain,
            time: start.elapsed(),
        };
        record(metrics, &report);
        let omitted = report.dkim_results_omitted(self.max_dkim_results);
        if omitted > 0 {
            metrics.auth_dkim_results_omitted.inc_by(omitted as u64);
        }
        report
    }

    /// ARC: the chain's verdict and its last sealer (None when ARC is off or the message was
    /// not parsed).
    async fn arc(
        &self,
        parsed: Option<&AuthenticatedMessage<'_>>,
        deadline: tokio::time::Instant,
        dm: &dns::DnsMetrics,
    ) -> Option<Arc> {
        let a = &self.resolver.authenticator;
        let m = parsed.filter(|_| self.arc)?;
        let l = self.resolver.lookups(dm);
        let v = Views::of(&l);
        let out = tokio::time::timeout_at(deadline, a.verify_arc(cached(m, &v))).await;
        Some(match out {
            Err(_) => Arc {
                result: Verdict::TempError,
                sealer: None,
            },
            Ok(o) => Arc {
                result: arc_verdict(o.result()),
                sealer: o.sets().last().map(|s| {
                    (
                        bounded(&s.seal.header.d.to_ascii_lowercase()),
                        s.seal.header.i,
                    )
                }),
            },
        })
    }

    /// DMARC needs the others' results, so it runs after them; but the names its policy
    /// discovery asks are known now. Asking them here, all at once, puts the answers in the
    /// cache (a positive one in postsift's, NXDOMAIN in the resolver's negative cache) by the
    /// time DMARC runs: a cold message costs the longest chain's round trips, not SPF's
    /// followed by the tree walk's one name after another.
    async fn dmarc_prefetch(
        &self,
        parsed: Option<&AuthenticatedMessage<'_>>,
        deadline: tokio::time::Instant,
        dm: &dns::DnsMetrics,
    ) {
        let a = &self.resolver.authenticator;
        let Some(m) = parsed.filter(|_| self.dmarc) else {
            return;
        };
        let names = dmarc_walk_names(m);
        // Warm (the From domain's own record held): DMARC will find what it needs at once,
        // and asking again would only add lookups of the parents' NXDOMAIN.
        if names
            .first()
            .is_none_or(|n| self.resolver.cache.holds_txt(n))
        {
            return;
        }
        let asks = names.iter().map(|name| async move {
            // Each name its own lookup: the metrics time a check's lookups one at a time.
            let l = self.resolver.lookups(dm);
            let txt = l.txt();
            let ask = a.txt_lookup::<mail_auth::dmarc::Dmarc>(name.as_str(), Some(&txt));
            // The answer lands in the caches; its value (or error) is DMARC's business.
            let _ = tokio::time::timeout_at(deadline, ask).await;
        });
        futures_join_all(asks).await;
    }

    /// The report's DKIM results from mail-auth's outputs: None when DKIM was not checked (off,
    /// or the message not parsed), one temperror when the deadline passed.
    fn dkim_report(
        &self,
        checked: bool,
        dkim_timed_out: bool,
        dkim_outputs: &[mail_auth::DkimOutput<'_>],
    ) -> Option<Vec<Dkim>> {
        if !checked {
            None
        } else if dkim_timed_out {
            Some(vec![Dkim {
                result: Verdict::TempError,
                reason: Some("timed out".into()),
                domain: String::new(),
                selector: String::new(),
                b: String::new(),
            }])
        } else {
            Some(
                dkim_outputs
                    .iter()
                    .map(|o| self.dkim_result(o.result(), o.signature()))
                    .collect(),
            )
        }
    }

    fn dkim_result(&self, r: &DkimResult, sig: Option<&mail_auth::dkim::Signature>) -> Dkim {
        let (domain, selector, b) = match sig {
            Some(s) => (
                bounded(&s.d.to_ascii_lowercase()),
                bounded(&s.s),
                b_prefix(&s.b),
            ),
            None => Default::default(),
        };
        let short = match r {
            DkimResult::Pass | DkimResult::Fail(MaError::Crypto(_)) => {
                self.resolver.cache.dkim_key_bits(&domain, &selector)
            }
            _ => None,
        };
        let (result, reason) = match r {
            // RFC 8301: a key under 1024 bits is not to be trusted. ring (mail-auth's crypto
            // here) will not even verify with one, so a signature under such a key comes back
            // as a crypto failure; either way the answer is `policy`, saying why.
            DkimResult::Pass | DkimResult::Fail(MaError::Crypto(_))
                if short.is_some_and(|bits| bits < 1024) =>
            {
                let bits = short.unwrap_or(0);
                (Verdict::Policy, Some(format!("key too short: {bits} bits")))
            }
            DkimResult::Pass => (Verdict::Pass, None),
            DkimResult::Neutral(e) => (Verdict::Neutral, Some(reason(e))),
            DkimResult::Fail(e) => (Verdict::Fail, Some(reason(e))),
            DkimResult::PermError(e) => (Verdict::PermError, Some(reason(e))),
            DkimResult::TempError(e) => (Verdict::TempError, Some(reason(e))),
            DkimResult::None => (Verdict::None, None),
        };
        Dkim {
            result,
            reason,
            domain,
            selector,
            b,
        }
    }
}

/// The names DMARC's policy discovery (mail-auth 0.13's DMARCbis tree walk) asks for the From
/// domain: `_dmarc.` + the domain, then (past eight labels, from the seventh) each parent down
/// to the top-level domain. None for a From with several domains, which DMARC exempts.
fn dmarc_walk_names(m: &AuthenticatedMessage<'_>) -> Vec<String> {
    let mut domain: Option<String> = None;
    for from in &m.from {
        if let Some((_, d)) = from.rsplit_once('@') {
            let d = mail_auth::common::to_a_label(d).into_owned();
            match &domain {
                None => domain = Some(d),
                Some(first) if *first != d => return Vec::new(),
                Some(_) => {}
            }
        }
    }
    let Some(domain) = domain else {
        return Vec::new();
    };
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}.", labels[total - count..].join(".")));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// Runs every future in `fs` concurrently on this task and waits for all: tokio has no
/// `join_all`, and a `JoinSet` wants `'static` tasks, while these borrow the cache views.
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let mut fs: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        fs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if fs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The first From address's domain, lower case.
fn from_domain(m: &AuthenticatedMessage<'_>) -> String {
    m.from
        .first()
        .and_then(|f| f.rsplit_once('@'))
        .map(|(_, d)| bounded(&d.to_ascii_lowercase()))
        .unwrap_or_default()
}

/// mail-auth's DMARC output as a verdict. mail-auth sets the SPF and DKIM sides only from a
/// pass (aligned or not), so a published record with neither side passing is a `fail` here —
/// unless SPF or the key lookups failed for DNS reasons, which is `temperror` (a DNS outage must
/// not turn into a DMARC reject).
fn dmarc_result(o: &mail_auth::DmarcOutput, spf_temp: bool) -> Dmarc {
    let record = o.dmarc_record();
    let temp = |r: &DmarcResult| matches!(r, DmarcResult::TempError(_));
    let perm = |r: &DmarcResult| matches!(r, DmarcResult::PermError(_));
    let (spf, dkim) = (o.spf_result(), o.dkim_result());
    let result = if *spf == DmarcResult::Pass || *dkim == DmarcResult::Pass {
        Verdict::Pass
    } else if record.is_some() {
        if spf_temp {
            Verdict::TempError
        } else {
            Verdict::Fail
        }
    } else if temp(spf) || temp(dkim) {
        Verdict::TempError
    } else if perm(spf) || perm(dkim) {
        Verdict::PermError
    } else {
        Verdict::None
    };
    Dmarc {
        result,
        domain: bounded(o.domain()),
        policy: record.map(|_| DmarcPolicyKind::from(o.policy())),
        p: record.map(|r| DmarcPolicyKind::from(r.p)),
        sp: record.map(|r| DmarcPolicyKind::from(r.sp)),
        testing: record.is_some_and(|r| r.t),
    }
}

fn arc_verdict(r: &DkimResult) -> Verdict {
    match r {
        DkimResult::Pass => Verdict::Pass,
        DkimResult::None => Verdict::None,
        DkimResult::TempError(_) => Verdict::TempError,
        DkimResult::Fail(_) | DkimResult::Neutral(_) | DkimResult::PermError(_) => Verdict::Fail,
    }
}

/// A few words for a DKIM failure, as OpenDKIM and others word them.
fn reason(e: &MaError) -> String {
    match e {
        MaError::Dkim(DkimError::FailedBodyHashMatch) => "body hash did not verify".into(),
        MaError::Dkim(DkimError::SignatureExpired) => "signature expired".into(),
        MaError::Dkim(DkimError::RevokedPublicKey) => "key revoked".into(),
        MaError::Dkim(DkimError::FailedAuidMatch) => "i= not within d=".into(),
        MaError::Dkim(DkimError::SignatureLength) => "l= tag not accepted".into(),
        MaError::Dkim(DkimError::UnsupportedAlgorithm) => "unsupported algorithm".into(),
        MaError::Dkim(DkimError::UnsupportedKeyType) => "unsupported key type".into(),
        MaError::Crypto(_) => "signature did not verify".into(),
        MaError::Dns(DnsError::RecordNotFound(_)) => "no key for signature".into(),
        MaError::Dns(DnsError::InvalidRecordType) => "key record not usable".into(),
        MaError::Dns(DnsError::Resolver(_)) => "key lookup failed".into(),
        other => words(&other.to_string()),
    }
}

/// Text safe inside an RFC 8601 comment: letters, digits and a little punctuation.
fn words(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .,:=_-'/".contains(*c))
        .take(80)
        .collect()
}

/// At most 255 characters of a value from the message.
fn bounded(s: &str) -> String {
    s.chars().take(255).collect()
}

/// The first 8 base64 characters of b= (the first 6 bytes), which tell signatures apart.
fn b_prefix(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3).take(2) {
        if chunk.len() < 3 {
            break;
        }
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
        }
    }
    out
}

fn record(metrics: &AuthMetrics, r: &AuthReport) {
    let count = |method: &str, v: Verdict| {
        metrics
            .auth_results
            .with_label_values(&[method, v.label()])
            .inc();
    };
    if let Some(s) = &r.spf {
        count("spf", s.result);
    }
    if let Some(s) = &r.spf_helo {
        count("spf_helo", s.result);
    }
    if let Some(d) = &r.dkim {
        if d.is_empty() {
            count("dkim", Verdict::None);
        }
        for s in d {
            count("dkim", s.result);
        }
    }
    if let Some(d) = &r.dmarc {
        count("dmarc", d.result);
    }
    if let Some(a) = &r.arc {
        count("arc", a.result);
    }
    metrics.auth_duration.observe(r.time.as_secs_f64());
}

/// Whether the ARC chain passed and its newest seal is from one of `trusted` (case-insensitive).
pub fn trusted_arc(r: &AuthReport, trusted: &[String]) -> bool {
    match &r.arc {
        Some(Arc {
            result: Verdict::Pass,
            sealer: Some((d, _)),
        }) => trusted.iter().any(|t| t.eq_ignore_ascii_case(d)),
        _ => false,
    }
}

/// The rules the report fires, each with its configured score (SpamAssassin's by default; a
/// rule scored 0 is off), sorted by name as SpamAssassin lists them. DMARC rules only when
/// `dmarc_scored`.
pub fn rules(r: &AuthReport, config: &Config) -> Vec<(String, f64)> {
    let dmarc_scored = config.auth.dmarc_policy != crate::config::DmarcPolicy::Ignore;
    let mut fired: Vec<&'static str> = Vec::new();
    let spf = |prefix: &str, v: Verdict| -> Option<&'static str> {
        let name = match v {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::SoftFail => "SOFTFAIL",
            Verdict::Neutral => "NEUTRAL",
            Verdict::None => "NONE",
            Verdict::TempError => "TEMPERROR",
            Verdict::PermError => "PERMERROR",
            Verdict::Policy => return None,
        };
        let full = if matches!(v, Verdict::TempError | Verdict::PermError) {
            format!("T_{prefix}_{name}")
        } else {
            format!("{prefix}_{name}")
        };
        RULES.iter().map(|(n, _)| *n).find(|n| *n == full)
    };
    if let Some(s) = &r.spf {
        fired.extend(spf("SPF", s.result));
    }
    if let Some(s) = &r.spf_helo {
        fired.extend(spf("SPF_HELO", s.result));
    }
    if let Some(sigs) = r.dkim.as_ref().filter(|d| !d.is_empty()) {
        fired.push("DKIM_SIGNED");
        let valid: Vec<&Dkim> = sigs.iter().filter(|s| s.result == Verdict::Pass).collect();
        if valid.is_empty() {
            fired.push("DKIM_INVALID");
        } else {
            fired.push("DKIM_VALID");
            let author = r.dmarc.as_ref().map(|d| d.domain.as_str()).unwrap_or("");
            if !author.is_empty() && valid.iter().any(|s| s.domain == author) {
                fired.push("DKIM_VALID_AU");
            }
            if !r.envelope_domain.is_empty() && valid.iter().any(|s| s.domain == r.envelope_domain)
            {
                fired.push("DKIM_VALID_EF");
            }
        }
    }
    if let Some(d) = r.dmarc.as_ref().filter(|_| dmarc_scored) {
        match (d.result, d.policy) {
            (Verdict::Pass, _) => fired.push("DMARC_PASS"),
            (Verdict::Fail, Some(DmarcPolicyKind::Reject)) => fired.push("DMARC_REJECT"),
            (Verdict::Fail, Some(DmarcPolicyKind::Quarantine)) => fired.push("DMARC_QUAR"),
            (Verdict::Fail, _) => fired.push("DMARC_NONE"),
            (Verdict::None, _) if !d.domain.is_empty() => fired.push("DMARC_MISSING"),
            _ => {}
        }
    }
    match r.arc.as_ref().map(|a| a.result) {
        Some(Verdict::Pass) => fired.push("ARC_VALID"),
        Some(Verdict::Fail) => fired.push("ARC_INVALID"),
        _ => {}
    }
    let mut out: Vec<(String, f64)> = fired
        .into_iter()
        .map(|name| (name.to_owned(), score(config, name)))
        .filter(|(_, s)| *s != 0.0)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The configured score of `rule`, else SpamAssassin's.
pub fn score(config: &Config, rule: &str) -> f64 {
    config.auth.scores.get(rule).copied().unwrap_or_else(|| {
        RULES
            .iter()
            .find(|(n, _)| *n == rule)
            .map_or(0.0, |(_, s)| *s)
    })
}

/// A report where everything passes (SPF, DKIM by example.org's s1, DMARC under p=reject),
/// for the tests here and in `rewrite`.
#[cfg(test)]
pub(crate) fn sample_report() -> AuthReport {
    AuthReport {
        spf: Some(Spf {
            result: Verdict::Pass,
            identity: "a@example.org".into(),
        }),
        spf_helo: Some(Spf {
            result: Verdict::None,
            identity: "mx.example.org".into(),
        }),
        spf_skipped: None,
        message_skipped: None,
        dkim: Some(vec![Dkim {
            result: Verdict::Pass,
            reason: None,
            domain: "example.org".into(),
            selector: "s1".into(),
            b: "AbCdEfGh".into(),
        }]),
        dmarc: Some(Dmarc {
            result: Verdict::Pass,
            domain: "example.org".into(),
            policy: Some(DmarcPolicyKind::Reject),
            p: Some(DmarcPolicyKind::Reject),
            sp: Some(DmarcPolicyKind::Reject),
            testing: false,
        }),
        arc: Some(Arc {
            result: Verdict::None,
            sealer: None,
        }),
        envelope_domain: "example.org".into(),
        time: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &[(String, f64)]) -> Vec<&str> {
        r.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_clean_signed_message_fires_spamassassins_rules() {
        let c = Config::default();
        let r = rules(&sample_report(), &c);
        assert_eq!(
            names(&r),
            [
                "DKIM_SIGNED",
                "DKIM_VALID",
                "DKIM_VALID_AU",
                "DKIM_VALID_EF",
                "DMARC_PASS",
                "SPF_HELO_NONE",
                "SPF_PASS"
            ]
        );
        assert!(r.contains(&("SPF_PASS".into(), -0.001)));
        assert!(r.contains(&("DKIM_VALID_AU".into(), -0.1)));
    }

    #[test]
    fn failures_and_configured_scores() {
        let mut c = Config::default();
        c.auth.scores.insert("SPF_FAIL".into(), 3.5);
        c.auth.scores.insert("DKIM_SIGNED".into(), 0.0);
        let mut r = sample_report();
        r.spf.as_mut().unwrap().result = Verdict::Fail;
        r.spf_helo.as_mut().unwrap().result = Verdict::TempError;
        r.dkim.as_mut().unwrap()[0].result = Verdict::Neutral;
        r.dmarc.as_mut().unwrap().result = Verdict::Fail;
        r.arc.as_mut().unwrap().result = Verdict::Fail;
        let got = rules(&r, &c);
        assert_eq!(
            names(&got),
            [
                "ARC_INVALID",
                "DKIM_INVALID",
                "DMARC_REJECT",
                "SPF_FAIL",
                "T_SPF_HELO_TEMPERROR"
            ],
            "a rule scored 0 is off"
        );
        assert!(got.contains(&("SPF_FAIL".into(), 3.5)));
        c.auth.dmarc_policy = crate::config::DmarcPolicy::Ignore;
        assert!(!names(&rules(&r, &c)).contains(&"DMARC_REJECT"));
        r.dmarc.as_mut().unwrap().policy = Some(DmarcPolicyKind::Quarantine);
        c.auth.dmarc_policy = crate::config::DmarcPolicy::Score;
        assert!(names(&rules(&r, &c)).contains(&"DMARC_QUAR"));
    }

    #[test]
    fn every_rule_name_is_known() {
        let c = Config::default();
        for (name, s) in RULES {
            assert_eq!(score(&c, name), *s);
        }
    }

    #[test]
    fn dmarc_prefetch_asks_the_names_of_the_tree_walk() {
        let walk = |from: &str| {
            let raw = format!("From: {from}\r\nSubject: x\r\n\r\nbody\r\n");
            let m = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
            dmarc_walk_names(&m)
        };
        assert_eq!(
            walk("a@Mail.Example.ORG"),
            [
                "_dmarc.mail.example.org.",
                "_dmarc.example.org.",
                "_dmarc.org."
            ]
        );
        // Past eight labels the walk jumps to the last seven.
        let deep = walk("a@1.2.3.4.5.6.7.8.9.test");
        assert_eq!(deep[0], "_dmarc.1.2.3.4.5.6.7.8.9.test.");
        assert_eq!(deep[1], "_dmarc.4.5.6.7.8.9.test.");
        assert_eq!(deep.len(), 8);
        assert!(walk("a@localhost").is_empty());
        assert!(walk("a@one.example, b@two.example").is_empty());
    }

    #[test]
    fn xforward_client() {
        let c = Client::from_xforward(Some("IPV6:2001:db8::1"), Some("mx.example.org"), "a@b");
        assert_eq!(c.ip, Some("2001:db8::1".parse().unwrap()));
        let c = Client::from_xforward(Some("[UNAVAILABLE]"), Some("[UNAVAILABLE]"), "");
        assert_eq!((c.ip, c.helo), (None, None));
        assert_eq!(
            Client::from_xforward(Some("192.0.2.1"), None, "").ip,
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn b_prefix_is_eight_base64_characters() {
        assert_eq!(b_prefix(b"\x00\x10\x83\x10\x51\x87rest"), "ABCDEFGH");
        assert_eq!(b_prefix(b"ab"), "");
    }

    #[test]
    fn trusted_sealer_needs_a_passing_chain() {
        let mut r = sample_report();
        let trusted = vec!["Lists.Example.net".to_string()];
        r.arc = Some(Arc {
            result: Verdict::Pass,
            sealer: Some(("lists.example.net".into(), 1)),
        });
        assert!(trusted_arc(&r, &trusted));
        r.arc.as_mut().unwrap().result = Verdict::Fail;
        assert!(!trusted_arc(&r, &trusted));
    }

    /// No DNS is asked: no client address (no SPF), no message (too large).
    #[tokio::test]
    async fn a_message_over_the_limit_gets_spf_only_and_says_why() {
        let mut c = Config::default();
        c.dns.servers = vec!["127.0.0.1:9".into()];
        let checker = Checker::new(&c).unwrap().unwrap();
        let m = AuthMetrics::register(&prometheus::Registry::new());
        let r = checker.check(b"", &Client::default(), &m).await;
        assert_eq!(
            (r.spf_skipped, r.message_skipped),
            (
                Some("no client address from XFORWARD ADDR"),
                Some("message over auth.max_message_size")
            )
        );
        assert_eq!((r.spf, r.dkim, r.dmarc, r.arc), (None, None, None, None));
        let local = Client::from_xforward(Some("127.0.0.1"), Some("localhost"), "a@example.org");
        let r = checker.check(b"", &local, &m).await;
        assert_eq!(r.spf_skipped, Some("client address is loopback"));
        assert_eq!((r.spf, r.spf_helo), (None, None));
        c.auth.enabled = false;
        assert!(Checker::new(&c).unwrap().is_none());
    }
}
