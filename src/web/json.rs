//! The shape every JSON answer of the API shares: a `"schema"` version, and errors as
//! `{"schema": 1, "error": "…"}` saying what is wrong and what is accepted.
//!
//! In: a value or an error message. Out: an axum [`Response`].

use axum::http::StatusCode;
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

/// `body` (a JSON object) with `"schema"` added, and `status`.
pub fn answer(status: StatusCode, mut body: Value) -> Response {
    if let Value::Object(map) = &mut body {
        map.insert("schema".to_owned(), json!(SCHEMA));
    }
    (status, Json(body)).into_response()
}
