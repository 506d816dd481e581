//! The web layer's one error answer, and store reads held to a deadline.
//!
//! In: what went wrong in a handler (a bad parameter, an unknown product, a refused stream, a
//! store read that failed or did not answer). Out: an [`ApiError`], which answers as the API's
//! JSON (`{"schema": 1, "error": …}`, see [`super::json`]) with its status and `Retry-After`,
//! or, wrapped in a [`PageError`], as a small HTML page (the dashboard's pages). A store read
//! goes through [`read`] (or [`within`] when the caller logs nothing): the deadline, the
//! warning with the error redacted, and a typed [`ReadError`] that the handler turns into its
//! 503.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::json;

/// An error answer: a status, a message saying what is wrong and what is accepted, and when to
/// come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message.to_string())
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 503, come back in `retry_after` seconds.
    pub fn unavailable(message: impl Into<String>, retry_after: &'static str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(retry_after)
    }

    /// The same answer with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: &'static str) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// As an HTML page (the dashboard).
    pub fn page(self) -> PageError {
        PageError(self)
    }

    fn with_retry_after(&self, mut response: Response) -> Response {
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let response = json::error(self.status, self.message.clone());
        self.with_retry_after(response)
    }
}

/// An [`ApiError`] answered as a small HTML page (the JSON shape is for the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let PageError(error) = self;
        let escaped = askama::filters::escape(&error.message, askama::filters::Html)
            .map(|e| e.to_string())
            .unwrap_or_default();
        let status = error.status;
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
             content=\"width=device-width, initial-scale=1\"><title>{} · spot-canvas</title></head>\
             <body><h1>{}</h1><p>{escaped}</p><p><a href=\"/\">Back to the markets</a></p></body></html>",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
        );
        error.with_retry_after((status, Html(html)).into_response())
    }
}

/// A store read that did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The store answered an error: `detail` is its text with secrets redacted, `kind` what
    /// went wrong without anything the error may quote.
    #[error("{detail}")]
    Failed { detail: String, kind: &'static str },
}

/// An error of a store read: its text may quote connection details.
pub trait StoreFailure: Display {
    /// What went wrong, quoting nothing.
    fn kind(&self) -> &'static str {
        "error"
    }
}

impl StoreFailure for sqlx::Error {
    fn kind(&self) -> &'static str {
        super::health::error_kind(self)
    }
}

impl StoreFailure for String {}

/// `read`'s answer within `deadline`, its error redacted; nothing logged.
pub async fn within<T, E: StoreFailure>(
    deadline: Duration,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, ReadError> {
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(ReadError::Failed {
            detail: crate::config::redact(&error.to_string()),
            kind: error.kind(),
        }),
        Err(_elapsed) => Err(ReadError::TimedOut(deadline)),
    }
}

/// `read`'s answer within `deadline`; a failure is logged as a warning naming `what`.
pub async fn read<T, E: StoreFailure>(
    what: &'static str,
    deadline: Duration,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, ReadError> {
    let answer = within(deadline, read).await;
    if let Err(error) = &answer {
        tracing::warn!(%error, "{what} failed");
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn an_error_answers_json_for_the_api_and_html_for_pages() {
        let error = ApiError::unavailable("the list is <away>", "5");
        let json = error.clone().into_response();
        assert_eq!(json.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            body(json).await,
            r#"{"error":"the list is <away>","schema":1}"#
        );
        let page = error.page().into_response();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            page.headers()[header::CONTENT_TYPE]
                .to_str()
                .expect("text")
                .starts_with("text/html")
        );
        let html = body(page).await;
        assert!(html.contains("<h1>Service Unavailable</h1>"), "{html}");
        assert!(html.contains("the list is &#60;away&#62;"), "{html}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_is_held_to_its_deadline_and_its_error_is_redacted() {
        let hung = within(
            Duration::from_secs(2),
            std::future::pending::<Result<(), String>>(),
        )
        .await;
        assert_eq!(hung, Err(ReadError::TimedOut(Duration::from_secs(2))));
        let failed = read("a test read", Duration::from_secs(2), async {
            Err::<(), _>("postgres://user:hunter2@db/x refused".to_owned())
        })
        .await
        .expect_err("failed");
        assert!(!failed.to_string().contains("hunter2"), "{failed}");
        assert!(matches!(failed, ReadError::Failed { kind: "error", .. }));
    }
}
