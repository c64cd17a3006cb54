//! The web demo served at `/` (`Config::demo`): the page, script and style built from `web/`
//! by `npm run build -w web` and checked in under `web/dist/`, embedded in the binary so that
//! `concord serve` alone shows it.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &[u8] = include_bytes!("../../../../web/dist/index.html");
const SCRIPT: &[u8] = include_bytes!("../../../../web/dist/app.js");
const STYLE: &[u8] = include_bytes!("../../../../web/dist/app.css");

/// The page may load only its own script and style and talk only to its own server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static [u8]) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}

/// `/` (the page), `/demo/app.js` and `/demo/app.css`.
pub fn routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/demo/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/demo/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
