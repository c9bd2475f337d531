//! Postfix's policy delegation protocol (SMTPD_POLICY_README), framing only: a request is
//! `name=value` lines ended by an empty line, an answer is `action=…` and an empty line, and
//! the connection carries many requests. Lines may end in CRLF (postgrey accepts it too);
//! lines without `=` are ignored, as postgrey does; a line or request over the size limits
//! is an error, and the caller closes the connection.

use std::collections::HashMap;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest line accepted (Postfix's attributes are short; certificates' names are the
/// longest at a few hundred bytes).
pub const MAX_LINE: usize = 8192;
/// Most attributes in one request (Postfix sends about 30).
pub const MAX_ATTRIBUTES: usize = 256;
/// Bytes of a value kept: postgrey keeps 512 of each name and value.
const MAX_VALUE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_ATTRIBUTES} attributes in one request")]
    TooManyAttributes,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One request's attributes. Unknown ones are kept and ignored by the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    attrs: HashMap<String, String>,
}

impl Request {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Request {
        Request {
            attrs: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

fn truncated(s: &str) -> &str {
    if s.len() <= MAX_VALUE {
        return s;
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads the next request. `Ok(None)`: the client closed the connection between requests.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<Option<Request>, Error> {
    let mut req = Request::default();
    let mut started = false;
    loop {
        line.clear();
        let n = (&mut *r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', line)
            .await?;
        if n == 0 {
            return if started {
                Err(Error::Truncated)
            } else {
                Ok(None)
            };
        }
        if line.last() != Some(&b'\n') {
            if n > MAX_LINE {
                return Err(Error::LineTooLong);
            }
            return Err(Error::Truncated);
        }
        started = true;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            return Ok(Some(req));
        }
        let text = String::from_utf8_lossy(line);
        if let Some((k, v)) = text.split_once('=') {
            if req.attrs.len() >= MAX_ATTRIBUTES {
                return Err(Error::TooManyAttributes);
            }
            req.attrs
                .insert(truncated(k).to_owned(), truncated(v).to_owned());
        }
    }
}

/// Writes `action=<action>` and the empty line.
pub async fn write_action<W: AsyncWrite + Unpin>(w: &mut W, action: &str) -> std::io::Result<()> {
    // A newline inside the action would end the answer early and desynchronise the stream.
    let action: String = action
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    w.write_all(format!("action={action}\n\n").as_bytes())
        .await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn read_all(input: &[u8]) -> Vec<Result<Option<Request>, String>> {
        let mut r = BufReader::new(input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            let x = read_request(&mut r, &mut line)
                .await
                .map_err(|e| e.to_string());
            let end = !matches!(x, Ok(Some(_)));
            out.push(x);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn requests_on_one_connection() {
        let got =
            read_all(b"request=smtpd_access_policy\nsender=a@b\r\nfoo\nx=y=z\n\nrecipient=c@d\n\n")
                .await;
        assert_eq!(got.len(), 3);
        let first = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(first.get("sender"), Some("a@b"));
        assert_eq!(first.get("x"), Some("y=z"));
        assert_eq!(first.get("foo"), None);
        let second = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(second.get("recipient"), Some("c@d"));
        assert_eq!(second.get("sender"), None);
        assert!(matches!(got[2], Ok(None)));
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        let mut long = b"a=".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE * 4));
        long.push(b'\n');
        assert_eq!(
            read_all(&long).await[0],
            Err(Error::LineTooLong.to_string())
        );
        assert_eq!(
            read_all(b"a=b\n").await[0],
            Err(Error::Truncated.to_string())
        );
        let many: Vec<u8> = (0..=MAX_ATTRIBUTES)
            .flat_map(|i| format!("k{i}=v\n").into_bytes())
            .collect();
        assert_eq!(
            read_all(&many).await[0],
            Err(Error::TooManyAttributes.to_string())
        );
        let v = "é".repeat(400);
        let got = read_all(format!("k={v}\n\n").as_bytes()).await;
        assert_eq!(
            got[0]
                .as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .get("k")
                .unwrap()
                .len(),
            512
        );
    }

    #[tokio::test]
    async fn answer_is_one_line_and_a_blank() {
        let mut out = Vec::new();
        write_action(&mut out, "DEFER_IF_PERMIT a\nb")
            .await
            .unwrap();
        assert_eq!(out, b"action=DEFER_IF_PERMIT a b\n\n");
    }
}
