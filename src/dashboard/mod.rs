//! The dashboard: a static page built into the binary (no CDN, no chart library: the chart is
//! a hand-drawn SVG line, a few dozen lines of `assets/app.js`), served at `/dashboard/` by the
//! processor's HTTP server beside the read API it calls (`crate::http_api`).
//!
//! Owns: the assets and their content types and headers.
//!
//! Must never: embed data in a page (the page fetches `/api/v1` and `/metrics` from the browser,
//! with the API's token when one is set) or load anything from another origin (the Content
//! Security Policy says `'self'` only).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The dashboard's answer for `path`, or `None` when the path is not the dashboard's.
pub fn respond(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "/dashboard" | "/" => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/dashboard/"));
            return Some(response);
        }
        "/dashboard/" | "/dashboard/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (APP, "text/javascript; charset=utf-8"),
        "/dashboard/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_are_served_and_nothing_else() {
        for (path, kind) in [
            ("/dashboard/", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
        ] {
            let response = respond(path).expect(path);
            assert_eq!(response.status(), StatusCode::OK);
            let content_type = response.headers()[CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
        }
        assert_eq!(respond("/dashboard").unwrap().status(), StatusCode::FOUND);
        assert!(respond("/dashboard/../metrics").is_none());
        assert!(respond("/dashboard/secret").is_none());
        // No other origin anywhere in the page.
        for asset in [INDEX, APP, STYLE] {
            assert!(!asset.contains("http://") || asset.contains("http://www.w3.org/2000/svg"));
            assert!(!asset.contains("https://"));
        }
    }
}
