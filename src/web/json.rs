//! The shape every JSON answer of the API shares: a `"schema"` version, and errors as
//! `{"schema": 1, "error": "…"}` saying what is wrong and what is accepted.
//!
//! In: a value or an error message. Out: an axum [`Response`]. [`ApiQuery`] is the query-string
//! extractor whose rejection (a malformed query string) answers in that shape too.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

/// The version of the JSON answers' shape. It changes only when a field is removed or changes
/// meaning; new fields may appear within a version.
pub const SCHEMA: u32 = 1;

/// `{"schema": 1, "error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "schema": SCHEMA, "error": message.into() })),
    )
        .into_response()
}

/// 400 with `message`.
pub fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

/// `body` (a JSON object) with `"schema"` added, and `status`.
pub fn answer(status: StatusCode, mut body: Value) -> Response {
    if let Value::Object(map) = &mut body {
        map.insert("schema".to_owned(), json!(SCHEMA));
    }
    (status, Json(body)).into_response()
}

/// The query string as name → value (the last of a repeated name wins). A query string that
/// is not `name=value` pairs of percent-encoded UTF-8 answers 400 in the API's shape.
#[derive(Debug, Clone, Default)]
pub struct ApiQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiQuery {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(map)) => Ok(ApiQuery(map)),
            Err(rejection) => Err(bad_request(format!(
                "malformed query string ({}); accepted: name=value pairs joined by '&', \
                 percent-encoded UTF-8",
                rejection.body_text()
            ))),
        }
    }
}
