//! The dashboard page at `/` and its static assets under `/static/…`, compiled into the node
//! binary so every node serves the same page with no CDN and no files beside the binary.
//!
//! The page (`crates/node/static/dashboard.html`, `.js`, `.css`) is plain HTML, JavaScript and
//! CSS with no build step; it talks only to the public API of the node that served it (REST and
//! `/api/v1/stream`). The chart library is uPlot, vendored unchanged under
//! `crates/node/static/vendor/uplot-<version>/` (see the `VENDORED.md` there).
//!
//! Caching: the page and its own script and style sheet change with the binary under the same
//! URLs, so they are served `no-cache` with an `ETag` (a hash of the bytes computed at compile
//! time) and revalidated with `If-None-Match`; the vendored files carry their version in the URL
//! and are cached as immutable.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The vendored uPlot's directory under `/static/vendor/` (its version is part of every URL).
pub const UPLOT_DIR: &str = "uplot-1.6.32";

/// How a static asset may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// Same URL, new bytes with every build: revalidate every time (cheap with the ETag).
    Revalidate,
    /// The URL names a version: the bytes behind it never change.
    Immutable,
}

/// One file served from the binary.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
    caching: Caching,
}

/// FNV-1a over `bytes`; a `const fn` so every ETag is computed by the compiler.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($path:expr, $file:expr, $ty:expr, $caching:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../../static/", $file));
        Asset {
            path: $path,
            content_type: $ty,
            body: BODY,
            etag: const { fnv1a(BODY) },
            caching: $caching,
        }
    }};
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const SVG: &str = "image/svg+xml";

static PAGE: Asset = asset!("/", "dashboard.html", HTML, Caching::Revalidate);

static ASSETS: [Asset; 6] = [
    asset!(
        "/static/dashboard.js",
        "dashboard.js",
        JS,
        Caching::Revalidate
    ),
    asset!(
        "/static/dashboard.css",
        "dashboard.css",
        CSS,
        Caching::Revalidate
    ),
    asset!(
        "/static/favicon.svg",
        "favicon.svg",
        SVG,
        Caching::Revalidate
    ),
    asset!(
        "/static/vendor/uplot-1.6.32/uPlot.iife.min.js",
        "vendor/uplot-1.6.32/uPlot.iife.min.js",
        JS,
        Caching::Immutable
    ),
    asset!(
        "/static/vendor/uplot-1.6.32/uPlot.min.css",
        "vendor/uplot-1.6.32/uPlot.min.css",
        CSS,
        Caching::Immutable
    ),
    asset!(
        "/static/vendor/uplot-1.6.32/LICENSE",
        "vendor/uplot-1.6.32/LICENSE",
        TEXT,
        Caching::Immutable
    ),
];

/// Where the page may load from and connect to: only the node that served it (the stream
/// WebSocket included), no inline script or style, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// `GET /` and `GET /static/…` (HEAD answered by axum from the same handlers).
pub fn router() -> Router {
    let mut r = Router::new().route("/", get(|h: HeaderMap| async move { serve(&PAGE, &h) }));
    for a in &ASSETS {
        r = r.route(a.path, get(move |h: HeaderMap| async move { serve(a, &h) }));
    }
    r
}

fn serve(a: &'static Asset, req: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", a.etag);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex ETag"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(match a.caching {
            Caching::Revalidate => "no-cache",
            Caching::Immutable => "public, max-age=31536000, immutable",
        }),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_caching() {
        for a in std::iter::once(&PAGE).chain(&ASSETS) {
            let res = get(a.path, None).await;
            assert_eq!(res.status(), 200, "{}", a.path);
            let h = res.headers();
            assert_eq!(h[header::CONTENT_TYPE], a.content_type, "{}", a.path);
            let cc = h[header::CACHE_CONTROL].to_str().unwrap();
            assert_eq!(
                cc.contains("immutable"),
                a.path.contains(UPLOT_DIR),
                "{}: {cc}",
                a.path
            );
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&body[..], a.body, "{}", a.path);
        }
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_and_the_page_a_csp() {
        let res = get("/", None).await;
        let etag = res.headers()[header::ETAG].to_str().unwrap().to_string();
        assert!(
            res.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let again = get("/", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/", Some("\"0000000000000000\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    /// Every local URL the page and its script name is one this router serves, so the page
    /// cannot silently depend on a file that is not compiled in (or on another host).
    #[test]
    fn the_page_references_only_served_assets() {
        let html = std::str::from_utf8(PAGE.body).unwrap();
        for part in html.split(['"', '\'']) {
            if part.starts_with("/static/") {
                assert!(
                    ASSETS.iter().any(|a| a.path == part),
                    "dashboard.html names {part}, which is not served"
                );
            }
            assert!(
                !part.starts_with("http://")
                    && !part.starts_with("https://")
                    && !part.starts_with("//"),
                "dashboard.html loads from another host: {part}"
            );
        }
    }
}
