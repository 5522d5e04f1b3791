//! `pullthrough import --server`: the bundle streamed to a running
//! mirror's admin API, which verifies and adds it while it serves.

use super::ImportReport;
use bytes::Bytes;
use std::path::Path;
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the mirror: {0}")]
    Unreachable(String),
    #[error("the mirror refused the bundle ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the mirror's answer is not an import report: {0}")]
    BadAnswer(String),
}

/// Posts `bundle` (`-` for stdin) to `server`'s `/api/v1/import` with the
/// admin token.
pub async fn import_remote(
    server: &str,
    token: &str,
    bundle: &Path,
) -> Result<ImportReport, RemoteError> {
    let base = url::Url::parse(server)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| RemoteError::BadUrl(server.chars().take(200).collect()))?;
    let url = base
        .join("/api/v1/import")
        .map_err(|_| RemoteError::BadUrl(server.chars().take(200).collect()))?;
    let read_error = |source| RemoteError::Read {
        path: bundle.display().to_string(),
        source,
    };
    let input: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if bundle.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(bundle).await.map_err(read_error)?)
    };
    let chunks = futures_util::stream::unfold(input, |mut input| async move {
        let mut buf = vec![0u8; 1 << 20];
        match input.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), input))
            }
            Err(e) => Some((Err(e), input)),
        }
    });
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .map_err(|e| RemoteError::Unreachable(e.without_url().to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| RemoteError::Unreachable(e.without_url().to_string()))?;
    if !status.is_success() {
        return Err(RemoteError::Refused {
            status: status.as_u16(),
            message: error_message(&body),
        });
    }
    serde_json::from_slice(&body).map_err(|e| RemoteError::BadAnswer(e.to_string()))
}

/// The message of an OCI error body, else the start of the text.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned));
    parsed.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}
