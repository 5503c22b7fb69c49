//! The HTTP side of `gnsctl`: one [`Client`] per invocation holding the base
//! URL and bearer token; JSON requests, the server's error bodies turned into
//! [`ServerError`]s, unreachable servers into [`CtlError::Connect`], and lists
//! read to the end by following `continue` tokens.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::{CtlError, ServerError};

/// Response header by which the server says whether a PUT changed anything.
pub const CHANGED_HEADER: &str = "x-gns-changed";

/// Page size asked for when listing.
pub const PAGE_LIMIT: u32 = 500;
/// Upper bound on pages followed in one list, against a server that never stops.
const MAX_PAGES: usize = 10_000;
/// Overall timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout for establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one GNS federation server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    server: String,
    token: Option<String>,
}

/// Parses `--server`: an `http(s)://` URL; a bare `host:port` means `https://host:port`.
pub fn parse_server(server: &str) -> Result<Url, CtlError> {
    let bad = |reason: String| CtlError::BadServer {
        server: server.to_owned(),
        reason,
    };
    let trimmed = server.trim();
    let text = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let url = Url::parse(&text).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it needs a host, e.g. https://127.0.0.1:8080".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment".into()));
    }
    Ok(url)
}

/// The innermost cause of an error, e.g. "Connection refused (os error 111)".
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl Client {
    /// A client for `server`, authenticating with `token` when given and
    /// verifying an `https://` server against the roots of `ca_file` (else
    /// the system's).
    pub fn new(
        server: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, CtlError> {
        let base = parse_server(server)?;
        let http = gns_trust::client_builder(ca_file)
            .map_err(|e| CtlError::ClientSetup(e.to_string()))?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("gnsctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::ClientSetup(root_cause(&e)))?;
        Ok(Client {
            http,
            base,
            server: server.trim().to_owned(),
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// The URL of an API path given as segments (each one percent-encoded).
    pub fn url(&self, segments: &[String]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request; returns the status and JSON body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        segments: &[String],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value, Option<bool>), CtlError> {
        let url = self.url(segments);
        let mut request = self.http.request(method.clone(), url.clone());
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.trim());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |e: reqwest::Error| {
            if let Some(line) = gns_trust::unverified(&e, "--ca-file or GNS_CA_FILE") {
                CtlError::Untrusted(line)
            } else if e.is_connect() {
                CtlError::Connect {
                    server: self.server.clone(),
                    reason: root_cause(&e),
                }
            } else {
                let reason = if e.is_timeout() {
                    format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
                } else {
                    root_cause(&e)
                };
                CtlError::Transport {
                    method: method.to_string(),
                    url: url.to_string(),
                    reason,
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        // Whether a PUT changed anything, as the server says (absent from older servers).
        let changed = response
            .headers()
            .get(CHANGED_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let mut error = ServerError::from_body(status.as_u16(), &bytes);
            if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
                error.hint = Some(
                    "no token was given: pass --token, set GNS_TOKEN, or run where ./gns-data/admin-token is readable"
                        .into(),
                );
            }
            return Err(error.into());
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, Value::Null, changed));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| CtlError::BadResponse {
            url: url.to_string(),
            reason: format!("body is not JSON: {e}"),
        })?;
        Ok((status, value, changed))
    }

    /// `GET` one object.
    pub async fn get(&self, segments: &[String]) -> Result<Value, CtlError> {
        Ok(self.send(Method::GET, segments, &[], None).await?.1)
    }

    /// `GET` one object; `None` when the server answers 404.
    pub async fn get_optional(&self, segments: &[String]) -> Result<Option<Value>, CtlError> {
        match self.get(segments).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` a JSON body.
    pub async fn post(&self, segments: &[String], body: &Value) -> Result<Value, CtlError> {
        Ok(self.send(Method::POST, segments, &[], Some(body)).await?.1)
    }

    /// `PUT` a JSON body; also returns whether the server answered 201 Created,
    /// and whether it changed anything (`x-gns-changed`).
    pub async fn put(
        &self,
        segments: &[String],
        body: &Value,
    ) -> Result<(Value, bool, Option<bool>), CtlError> {
        let (status, value, changed) = self.send(Method::PUT, segments, &[], Some(body)).await?;
        Ok((value, status == StatusCode::CREATED, changed))
    }

    /// `DELETE` one object.
    pub async fn delete(&self, segments: &[String]) -> Result<Value, CtlError> {
        Ok(self.send(Method::DELETE, segments, &[], None).await?.1)
    }

    /// `GET` every item of a collection, page by page.
    pub async fn list_all(&self, segments: &[String]) -> Result<Vec<Value>, CtlError> {
        let limit = PAGE_LIMIT.to_string();
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", limit.as_str())];
            if let Some(t) = &token {
                query.push(("continue", t.as_str()));
            }
            let (_, page, _) = self.send(Method::GET, segments, &query, None).await?;
            let bad = |reason: &str| CtlError::BadResponse {
                url: self.url(segments).to_string(),
                reason: reason.to_owned(),
            };
            match page.get("items") {
                Some(Value::Array(page_items)) => items.extend(page_items.iter().cloned()),
                _ => return Err(bad("a list without an \"items\" array")),
            }
            match page.get("continue") {
                None | Some(Value::Null) => return Ok(items),
                Some(Value::String(next)) if next.is_empty() => return Ok(items),
                Some(Value::String(next)) if token.as_deref() == Some(next.as_str()) => {
                    return Err(bad("the continue token did not advance"));
                }
                Some(Value::String(next)) => token = Some(next.clone()),
                Some(_) => return Err(bad("\"continue\" is not a string")),
            }
        }
        Err(CtlError::BadResponse {
            url: self.url(segments).to_string(),
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let url = |s: &str| parse_server(s).map(|u| u.to_string()).ok();
        assert_eq!(
            url("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(
            url("127.0.0.1:9000").as_deref(),
            Some("https://127.0.0.1:9000/")
        );
        assert_eq!(
            url("https://gns.example.com/base/").as_deref(),
            Some("https://gns.example.com/base/")
        );
        assert!(url("ftp://x").is_none());
        assert!(url("http://x/?a=b").is_none());
    }

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let client = Client::new("http://h:1/base/", None, None).expect("client");
        let segments = ["v1".to_owned(), "clusters".to_owned(), "a b/c".to_owned()];
        assert_eq!(
            client.url(&segments).as_str(),
            "http://h:1/base/v1/clusters/a%20b%2Fc"
        );
        let client = Client::new("http://h:1", None, None).expect("client");
        assert_eq!(client.url(&["v1".to_owned()]).as_str(), "http://h:1/v1");
    }
}
