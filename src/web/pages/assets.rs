//! The pages' static assets: `/static/*` from the built asset directory, with cache-busting
//! URLs.
//!
//! In: the asset directory (`STATIC_DIR`: `app.css` and `app.js` built by Tailwind and esbuild,
//! `datastar.js` fetched and checksum-verified by `task assets`). Out: `/static/<file>` and the
//! URLs the pages link (`/static/app.js?v=<content hash>`). A versioned URL is cached for a
//! year (its content never changes under that URL); an unversioned one is revalidated; in
//! development nothing is cached, so a rebuilt file shows on reload.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::services::ServeDir;

/// The files the pages link.
pub const LINKED: [&str; 3] = ["app.css", "app.js", "datastar.js"];

/// The asset directory and the versions of its linked files.
#[derive(Debug, Clone)]
pub struct Assets {
    dir: PathBuf,
    versions: HashMap<&'static str, String>,
    dev: bool,
}

impl Assets {
    /// Reads the linked files' contents for their versions. A missing file is logged (the
    /// pages still render, without style or behaviour, and say how to build them).
    pub fn load(dir: &Path, dev: bool) -> Assets {
        let mut versions = HashMap::new();
        for name in LINKED {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => {
                    versions.insert(name, content_hash(&bytes));
                }
                Err(error) => {
                    tracing::warn!(
                        file = %dir.join(name).display(),
                        %error,
                        "a page asset is missing: run `task assets`"
                    );
                }
            }
        }
        Assets {
            dir: dir.to_owned(),
            versions,
            dev,
        }
    }

    /// Whether every linked file was found.
    pub fn complete(&self) -> bool {
        self.versions.len() == LINKED.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL a page links for `name`.
    pub fn url(&self, name: &str) -> String {
        match self.versions.get(name) {
            Some(version) if !self.dev => format!("/static/{name}?v={version}"),
            _ => format!("/static/{name}"),
        }
    }

    /// `/static/*`.
    pub fn router(&self) -> Router {
        let dev = self.dev;
        Router::new()
            .nest_service("/static", ServeDir::new(&self.dir))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                cache_policy(dev, request, next)
            }))
    }
}

/// The first 16 hex digits of the content's hash.
fn content_hash(bytes: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

async fn cache_policy(dev: bool, request: Request, next: Next) -> Response {
    let versioned = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("v=")));
    let mut response = next.run(request).await;
    let policy = if dev {
        "no-store"
    } else if versioned && response.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_urls_follow_the_content() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("app.css"), "a{}").expect("write");
        std::fs::write(dir.path().join("app.js"), "1").expect("write");
        let assets = Assets::load(dir.path(), false);
        assert!(!assets.complete());
        let css = assets.url("app.css");
        assert!(css.starts_with("/static/app.css?v="), "{css}");
        assert_eq!(assets.url("datastar.js"), "/static/datastar.js");
        std::fs::write(dir.path().join("app.css"), "b{}").expect("write");
        assert_ne!(Assets::load(dir.path(), false).url("app.css"), css);
        assert_eq!(
            Assets::load(dir.path(), true).url("app.css"),
            "/static/app.css"
        );
    }
}
