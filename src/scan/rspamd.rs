//! rspamd as the spam engine: `POST /checkv2` over HTTP/1.1 with kept-alive connections (hyper's
//! pooled client), the envelope and the original client sent as request headers, and the JSON
//! answer (score, required score, action, symbols with their scores) parsed with serde.
//! The `rspamd-client` crate would pull in reqwest, native-tls and zstd for what is one POST;
//! hyper is already here for the metrics endpoint. rspamd's SPAMC-compatible port is not used:
//! it always answers `Spam: False` with the reject threshold and no symbol scores.

use crate::scan::report::FailureKind;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::scan::spamd::SpamResult;

/// What rspamd is told about the message besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The original client's address (XFORWARD ADDR).
    pub ip: Option<String>,
    pub helo: Option<String>,
    /// The original client's host name (XFORWARD NAME).
    pub hostname: Option<String>,
    pub from: String,
    pub rcpts: Vec<String>,
    /// Postfix's queue id (XFORWARD IDENT).
    pub queue_id: Option<String>,
    /// The original client for mail authentication: XFORWARD ADDR and HELO only, never the
    /// address of the hop into postsift (SPF must not check Postfix's 127.0.0.1).
    pub client: crate::scan::auth::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to rspamd at {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("rspamd at {endpoint} timed out")]
    Timeout { endpoint: String },
    #[error("rspamd at {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("rspamd at {endpoint}: {detail}")]
    Io { endpoint: String, detail: String },
    /// Every endpoint is marked down (see [`crate::peers`]): not tried.
    #[error("rspamd is down (every endpoint failed {down_after} times in a row), not tried until a probe answers")]
    Down { down_after: u32 },
}

impl Error {
    /// The kind of failure, shared by every check: an HTTP error status is a refusal.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Connect { .. } | Error::Down { .. } => FailureKind::Connect,
            Error::Timeout { .. } => FailureKind::Timeout,
            Error::Protocol { detail, .. } if detail.starts_with("HTTP ") => FailureKind::Refused,
            Error::Protocol { .. } | Error::Io { .. } => FailureKind::Protocol,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    score: f64,
    required_score: f64,
    action: String,
    #[serde(default)]
    symbols: BTreeMap<String, Symbol>,
}

#[derive(Debug, Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

/// Answers larger than this are refused (a normal one is a few KiB).
const MAX_REPLY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct RspamdClient {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoints: Vec<String>,
    password: Option<String>,
    timeout: Duration,
    health: std::sync::Arc<crate::peers::Group>,
}

impl RspamdClient {
    /// What its answers depend on besides the message and the envelope (the verdict cache's
    /// key): the endpoints and the password (a controller may apply other settings).
    pub fn identity(&self) -> Vec<String> {
        let mut id = self.endpoints.clone();
        id.push(format!("password={:?}", self.password));
        id
    }

    /// `endpoints` are `host:port` of rspamd's normal worker (or a controller, with `password`),
    /// tried in order while they refuse connections.
    pub fn new(
        endpoints: Vec<String>,
        connect_timeout: Duration,
        timeout: Duration,
        password: Option<String>,
    ) -> Self {
        let health = crate::peers::Group::new(
            crate::peers::Peer::Rspamd,
            &endpoints,
            crate::peers::DEFAULT_DOWN_AFTER,
        );
        Self::with_health(endpoints, (connect_timeout, timeout), password, health)
    }

    /// Like [`RspamdClient::new`], `timeouts` being `(connect, scan)`, with `health` the
    /// endpoints' health state (the runtime builds it with `[health] down_after`).
    pub fn with_health(
        endpoints: Vec<String>,
        (connect_timeout, timeout): (Duration, Duration),
        password: Option<String>,
        health: crate::peers::Group,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        RspamdClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(http),
            health: std::sync::Arc::new(health),
            endpoints,
            password,
            timeout,
        }
    }

    /// Each endpoint's health.
    pub fn health(&self) -> &crate::peers::Group {
        &self.health
    }

    /// `GET /ping` on endpoint `i` alone, bypassing its health state: true if it answers with
    /// a success status within `limit`.
    pub async fn ping_endpoint(&self, i: usize, limit: Duration) -> bool {
        let ep = &self.endpoints[i];
        let req = Request::get(format!("http://{ep}/ping"))
            .header("Host", ep.as_str())
            .body(Full::new(Bytes::new()))
            .expect("static request");
        matches!(
            tokio::time::timeout(limit, self.client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    /// Scans `message` (already truncated by the caller).
    pub async fn check(&self, message: Bytes, env: &Envelope) -> Result<SpamResult, Error> {
        let mut last = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let Some(attempt) = self.health.attempt(i) else {
                continue;
            };
            let r = self.check_one(ep, message.clone(), env).await;
            attempt.finish(match &r {
                Err(Error::Connect { .. } | Error::Timeout { .. } | Error::Io { .. }) => {
                    crate::peers::Outcome::Failed
                }
                _ => crate::peers::Outcome::Answered,
            });
            match r {
                Err(e @ Error::Connect { .. }) => {
                    tracing::warn!(endpoint = %ep, error = %e, "rspamd unreachable, trying the next endpoint");
                    last = Some(e);
                }
                other => return other,
            }
        }
        if last.is_none() && !self.endpoints.is_empty() {
            self.health.skipped();
            return Err(Error::Down {
                down_after: self.health.down_after(),
            });
        }
        Err(last.unwrap_or(Error::Connect {
            endpoint: "rspamd".into(),
            detail: "no endpoints".into(),
        }))
    }

    async fn check_one(
        &self,
        ep: &str,
        message: Bytes,
        env: &Envelope,
    ) -> Result<SpamResult, Error> {
        let mut req = Request::post(format!("http://{ep}/checkv2")).header("Host", ep);
        let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
        let known = |v: &Option<String>| {
            v.as_deref()
                .filter(|v| !v.is_empty() && *v != "[UNAVAILABLE]")
                .map(clean)
        };
        if let Some(ip) = known(&env.ip) {
            req = req.header("IP", ip.trim_start_matches("IPV6:"));
        }
        if let Some(h) = known(&env.helo) {
            req = req.header("Helo", h);
        }
        if let Some(h) = known(&env.hostname) {
            req = req.header("Hostname", h);
        }
        if let Some(q) = known(&env.queue_id) {
            req = req.header("Queue-Id", q);
        }
        req = req.header("From", clean(&env.from));
        for r in &env.rcpts {
            req = req.header("Rcpt", clean(r));
        }
        if let Some(p) = &self.password {
            req = req.header("Password", p.as_str());
        }
        let req = req.body(Full::new(message)).map_err(|e| Error::Protocol {
            endpoint: ep.into(),
            detail: format!("bad request header: {e}"),
        })?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Error::Connect {
                        endpoint: ep.into(),
                        detail: e.to_string(),
                    }
                } else {
                    Error::Io {
                        endpoint: ep.into(),
                        detail: e.to_string(),
                    }
                }
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| Error::Io {
                    endpoint: ep.into(),
                    detail: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(Error::Protocol {
                    endpoint: ep.into(),
                    detail: format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                });
            }
            parse_reply(&body).map_err(|detail| Error::Protocol {
                endpoint: ep.into(),
                detail,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    endpoint: ep.into(),
                })
            })
    }

    /// `GET /ping` on the first endpoint that answers.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut last = None;
        for ep in &self.endpoints {
            let req = Request::get(format!("http://{ep}/ping"))
                .body(Full::new(Bytes::new()))
                .expect("static request");
            match tokio::time::timeout(self.timeout, self.client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => return Ok(()),
                Ok(Ok(r)) => {
                    last = Some(Error::Protocol {
                        endpoint: ep.clone(),
                        detail: format!("HTTP {}", r.status()),
                    })
                }
                Ok(Err(e)) => {
                    last = Some(Error::Connect {
                        endpoint: ep.clone(),
                        detail: e.to_string(),
                    })
                }
                Err(_) => {
                    last = Some(Error::Timeout {
                        endpoint: ep.clone(),
                    })
                }
            }
        }
        Err(last.unwrap_or(Error::Connect {
            endpoint: "rspamd".into(),
            detail: "no endpoints".into(),
        }))
    }
}

/// rspamd's JSON answer as a [`SpamResult`]: symbols sorted by name (the order SpamAssassin's
/// `tests=[…]` uses), the action kept for policies that follow it.
pub fn parse_reply(body: &[u8]) -> Result<SpamResult, String> {
    let r: Reply = serde_json::from_slice(body).map_err(|e| format!("bad JSON reply: {e}"))?;
    if !r.score.is_finite() || !r.required_score.is_finite() {
        return Err("non-finite score".into());
    }
    let rules = r
        .symbols
        .into_iter()
        .filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(name, s)| (name, s.score))
        .collect();
    Ok(SpamResult {
        score: r.score,
        required: r.required_score,
        is_spam: r.action == "reject",
        rules,
        action: Some(r.action),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_gtube_reply() {
        let body = br#"{"is_skipped":false,"score":15.0,"required_score":15.0,"action":"reject",
            "symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0},
                       "MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"metric_score":-0.1,"options":["text/plain"]}},
            "messages":{"smtp_message":"Gtube pattern"},"message-id":"x@y","time_real":0.01,"milter":{}}"#;
        let r = parse_reply(body).unwrap();
        assert_eq!(r.score, 15.0);
        assert_eq!(r.action.as_deref(), Some("reject"));
        assert_eq!(
            r.rules,
            vec![("GTUBE".to_string(), 0.0), ("MIME_GOOD".to_string(), -0.1)]
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"{\"score\":1}").is_err());
        assert!(parse_reply(b"<html>").is_err());
    }
}
