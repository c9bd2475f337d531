//! amavis's policy protocol (AM.PDP) for `request=release`, so that Debian's `amavisd-release`
//! (and the web interfaces that run it) release from postsift's quarantine.
//!
//! The wire form, as amavisd-new 2.13's `Amavis::In::AMPDP` and `amavisd-release` speak it:
//! a request is `name=value` lines (CRLF or LF) ended by an empty line, names and values
//! `%XX`-encoded; attributes may repeat (`recipient`). The answer is one
//! `setreply=<code> <enhanced> <text>` line per recipient (the text `%XX`-encoded, spaces
//! included), then an empty line; several requests may follow on one connection.
//!
//! `mail_id` is postsift's message id (`mail_file` is used when it is absent); `recipient`
//! lines send the message to those addresses instead of the original recipients, as amavis
//! does. A `secret_id`, when the request carries one, is checked as amavis checks it (a wrong
//! one is `450 4.5.0 Failure: Secret_id … does not match mail_id …`, nothing sent) against the
//! SQL quarantine's `msgs` row; a request without one is taken, as with amavis's
//! `$auth_required_release = 0`, and the file store keeps no secret at all: the listener is
//! for administrators only (loopback, or a Unix socket of mode 0600).
//!
//! A connection is closed after `server.read_timeout` without a line, and at shutdown between
//! requests; the listener takes `quarantine.release_max_connections` at once (`server.rs`).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::release::{self, Request};
use super::sql::Store;
use super::Error;
use super::QuarantineMetrics;
use crate::escape::Shown;
use crate::reinject::Reinjector;
use crate::runtime::Runtime;

/// Longest request line, and most attributes in one request.
const MAX_LINE: usize = 4096;
const MAX_ATTRS: usize = 1000;

/// `%XX` → byte.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every byte outside `!`..`~` and `%` itself as `%XX` (amavis's `proto_encode`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// One `setreply` line from an SMTP reply `code enhanced text`.
fn setreply(reply: &str) -> String {
    let mut parts = reply.splitn(3, ' ');
    let code = parts.next().unwrap_or("450");
    let (enh, text) = match (parts.next(), parts.next()) {
        (Some(e), t) if e.chars().next().is_some_and(|c| c.is_ascii_digit()) && e.contains('.') => {
            (e.to_string(), t.unwrap_or(""))
        }
        (Some(_), _) => (
            format!("{}.0.0", &code[..1]),
            reply.get(code.len() + 1..).unwrap_or(""),
        ),
        (None, _) => (format!("{}.0.0", &code[..1.min(code.len())]), ""),
    };
    format!(
        "setreply={} {} {}",
        encode(code),
        encode(&enh),
        encode(text)
    )
}

/// Answers the requests on one connection until the client closes it.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: Arc<Runtime>,
) -> std::io::Result<()> {
    let mut s = BufReader::new(stream);
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut line = Vec::new();
    // A read deadline per line, and shutdown between requests (a release under way finishes
    // first): an idle connection neither lives for ever nor holds up the drain.
    let read_timeout = shared.config.read_timeout();
    loop {
        line.clear();
        let read = async {
            (&mut s)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
        };
        let n = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(read_timeout, read) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
        };
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            s.get_mut()
                .write_all(b"setreply=500 5.5.2 Line%20too%20long\r\n\r\n")
                .await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            if attrs.len() < MAX_ATTRS {
                let (k, v) = match text.split_once('=') {
                    Some(kv) => kv,
                    None => text.split_once(':').unwrap_or((text, "")),
                };
                attrs.push((decode(k), decode(v.trim_start())));
            }
            continue;
        }
        let replies = match Store::of(&shared) {
            Some(q) => answer(&attrs, &q, &shared.reinjector, &shared.metrics.quarantine).await,
            None => vec![setreply("450 4.5.0 the quarantine is not open")],
        };
        attrs.clear();
        let mut out = String::new();
        for r in replies {
            out.push_str(&r);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        s.get_mut().write_all(out.as_bytes()).await?;
        s.get_mut().flush().await?;
    }
}

/// The response lines (without CRLF) for one request.
async fn answer(
    attrs: &[(String, String)],
    q: &Store,
    reinjector: &Reinjector,
    metrics: &QuarantineMetrics,
) -> Vec<String> {
    let get = |k: &str| {
        attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let request = get("request").unwrap_or("").to_ascii_lowercase();
    if request != "release" {
        return vec![setreply(&format!(
            "550 5.5.1 request={} not supported by postsift (only release)",
            crate::escape::text(&request)
        ))];
    }
    // amavisd-release sends mail_id parsed from its argument; mail_file is the argument.
    let id = get("mail_id").map(str::to_owned).or_else(|| {
        get("mail_file").map(|f| {
            let base = f.rsplit('/').next().unwrap_or(f);
            let base = base.trim_end_matches(".gz");
            base.rsplit(['-', '_']).next().unwrap_or(base).to_owned()
        })
    });
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return vec![setreply("450 4.5.0 Incomplete request: no mail_id")];
    };
    let to: Vec<String> = attrs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("recipient"))
        .map(|(_, v)| v.trim_matches(['<', '>']).to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    // Refused here with a clear answer (the reinjection boundary would refuse it too).
    if let Some(bad) = to.iter().find(|a| release::bad_address(a)) {
        tracing::warn!(target: "postsift::quarantine", id = %Shown(&id),
            rcpt = %Shown(bad), "release (AM.PDP) refused: bad address syntax");
        return vec![setreply(&format!(
            "553 5.1.3 recipient <{}>: bad address syntax (RFC 5321), nothing released",
            crate::escape::text(bad)
        ))];
    }
    let by = get("requested_by").unwrap_or("-");
    // As amavis: a secret_id, when the request carries one, must authorize the release
    // (amavisd-release sends it when given; Modoboa sends the row's).
    if let Some(secret) = get("secret_id").filter(|s| !s.is_empty()) {
        if let Err(e) = q.check_secret(&id, secret).await {
            let denied = matches!(e, Error::Secret { .. });
            metrics
                .quarantine_releases
                .with_label_values(&[if denied { "denied" } else { "failed" }])
                .inc();
            tracing::warn!(target: "postsift::quarantine", id = %Shown(&id),
                requested_by = %Shown(by), error = %Shown(&e.to_string()),
                "release (AM.PDP) refused");
            return vec![setreply(&refusal(&e))];
        }
    }
    let req = Request {
        to,
        ..Default::default()
    };
    match q.release(reinjector, &id, &req).await {
        Ok(results) => {
            for (rcpt, r) in &results {
                metrics
                    .quarantine_releases
                    .with_label_values(&[r.label()])
                    .inc();
                tracing::info!(target: "postsift::quarantine", id = %Shown(&id),
                    rcpt = %Shown(rcpt), requested_by = %Shown(by),
                    result = %Shown(&r.reply(&id)), "release (AM.PDP)");
            }
            if results.is_empty() {
                return vec![setreply("250 2.5.0 No recipients, nothing to do")];
            }
            results
                .iter()
                .map(|(_, r)| setreply(&r.reply(&id)))
                .collect()
        }
        Err(e) => {
            metrics
                .quarantine_releases
                .with_label_values(&["failed"])
                .inc();
            tracing::warn!(id = %Shown(&id), error = %Shown(&e.to_string()), "release (AM.PDP) failed");
            vec![setreply(&refusal(&e))]
        }
    }
}

/// The reply to a release that did not happen: 550 for what asking again cannot change (no
/// such message, not a recipient), amavis's `450 4.5.0 Failure: …` for a wrong secret_id,
/// 450 for the rest (the database down …).
fn refusal(e: &Error) -> String {
    let code = match e {
        Error::NotFound(_) | Error::Usage(_) => "550 5.1.1",
        Error::Secret { .. } => "450 4.5.0 Failure:",
        _ => "450 4.5.0",
    };
    format!("{code} {}", crate::escape::text(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_matches_amavis() {
        assert_eq!(encode("Ok, id=a b%"), "Ok,%20id=a%20b%25");
        assert_eq!(decode("Ok,%20id=a%20b%25"), "Ok, id=a b%");
        assert_eq!(decode("50%"), "50%");
        assert_eq!(
            setreply("250 2.0.0 Ok, released"),
            "setreply=250 2.0.0 Ok,%20released"
        );
        assert_eq!(setreply("451 later"), "setreply=451 4.0.0 later");
    }
}
