//! The HTTP read API: the service's read endpoints and deployment totals as JSON, on the
//! processor's HTTP server (`[metrics]`; README "The HTTP read API").
//!
//! ```text
//!  GET  /api/v1/accounts/<account>/balance[?min_seq=N]          ─┐
//!  GET  /api/v1/accounts/<account>/usage[?period=N&min_seq=N]     │ the same request the NATS
//!  GET  /api/v1/accounts/<account>/statement[?limit=N&min_seq=N]  ├─► service takes, answered by
//!  POST /api/v1/price      (body: the service's price request)    │ the same Desk::handle
//!  POST /api/v1/authorize  (body: the service's authorize request)┘
//!  GET  /api/v1/totals                                           ─► one question per partition
//! ```
//!
//! Owns: routing, turning a path and query string into the service's request JSON, the bearer
//! token check, and HTTP statuses for the service's typed errors (the same codes: 400, 404,
//! 503; the body `{"error":{"code":…,"reason":…,"detail":…}}`).
//!
//! Must never: write anything (no commands over HTTP: they go through the NATS service, whose
//! subjects NATS permissions can guard), answer an `/api/` request without the token when one is
//! configured, compare the token in a way whose time depends on where it differs, or wait
//! longer than the service would (every question is bounded by `service.wait_max`).
//!
//! Invariants: a 200 body is byte for byte what the NATS service replies to the same request
//! (`tests/http_api_nats.rs`).

use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};

use crate::engine::query::{TopConsumers, TypeTotals};
use crate::metrics::{Metrics, ALERT_TYPES};
use crate::service::{Desk, ServiceError};
use crate::wire::output::push_json_string;

/// Bytes of a request body read at most (a price or authorize request is far smaller).
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The read API: the desk it asks (set once the shards run) and the token it requires.
pub struct Api {
    /// The running generation's desk (`processor::generation`); none between two.
    desk: RwLock<Option<Arc<Desk>>>,
    token: Option<String>,
    /// The process's metrics: the totals' alerts of the last hour.
    metrics: Metrics,
}

/// Accounts listed per credit type in the totals' `top_consumers`.
pub const TOP_CONSUMERS: usize = 5;

impl Api {
    pub fn new(token: Option<String>, metrics: Metrics) -> Arc<Api> {
        Arc::new(Api {
            desk: RwLock::new(None),
            token: token.filter(|t| !t.is_empty()),
            metrics,
        })
    }

    /// Connects the API to the running shards; until then it answers 503 `starting`.
    pub fn attach(&self, desk: Arc<Desk>) {
        if let Ok(mut attached) = self.desk.write() {
            *attached = Some(desk);
        }
    }

    /// Disconnects it (a generation ends: its shards stop); 503 `starting` until the next.
    pub fn detach(&self) {
        if let Ok(mut attached) = self.desk.write() {
            *attached = None;
        }
    }

    /// Whether `authorization` (the header's value) carries the configured token. Compares
    /// every byte whatever the first difference.
    fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let (a, b) = (given.as_bytes(), token.as_bytes());
        let mut differ = a.len() != b.len();
        for (index, byte) in b.iter().enumerate() {
            differ |= a.get(index).unwrap_or(&0) != byte;
        }
        !differ
    }

    /// Answers one request whose path starts with `/api/`.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        authorization: Option<&HeaderValue>,
        body: Result<Bytes, String>,
    ) -> Response<Full<Bytes>> {
        if !self.authorized(authorization) {
            let mut response = error(&ServiceError::new(
                401,
                "unauthorized",
                "this API requires the header Authorization: Bearer <metrics.token>",
            ));
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        match self.route(method, path, query, body).await {
            Ok(body) => json(StatusCode::OK, body),
            Err(refused) => error(&refused),
        }
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: Result<Bytes, String>,
    ) -> Result<String, ServiceError> {
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return Err(not_found(path));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let (endpoint, request) = match (method, segments.as_slice()) {
            (
                &Method::GET,
                ["accounts", account, endpoint @ ("balance" | "usage" | "statement")],
            ) => {
                let account = percent_encoding::percent_decode_str(account)
                    .decode_utf8()
                    .map_err(|_| {
                        ServiceError::bad_request("invalid_field", "account: not UTF-8")
                    })?;
                let allowed: &[&str] = match *endpoint {
                    "balance" => &["min_seq"],
                    "usage" => &["period", "min_seq"],
                    _ => &["limit", "min_seq"],
                };
                let endpoint: &'static str = match *endpoint {
                    "balance" => "balance",
                    "usage" => "usage",
                    _ => "statement",
                };
                (endpoint, request_json(&account, query, allowed)?)
            }
            (&Method::POST, [endpoint @ ("price" | "authorize")]) => {
                let body = body.map_err(|e| ServiceError::bad_request("bad_request", e))?;
                let endpoint: &'static str = if *endpoint == "price" {
                    "price"
                } else {
                    "authorize"
                };
                (endpoint, String::from_utf8_lossy(&body).into_owned())
            }
            (&Method::GET, ["totals"]) => return self.totals().await,
            (_, ["accounts", _, "balance" | "usage" | "statement"] | ["totals"]) => {
                return Err(ServiceError::new(405, "method_not_allowed", "use GET"))
            }
            (_, ["price" | "authorize"]) => {
                return Err(ServiceError::new(
                    405,
                    "method_not_allowed",
                    "use POST with the request as a JSON body",
                ))
            }
            _ => return Err(not_found(path)),
        };
        let desk = self.desk()?;
        desk.handle(endpoint, false, request.as_bytes()).await
    }

    fn desk(&self) -> Result<Arc<Desk>, ServiceError> {
        self.desk
            .read()
            .ok()
            .and_then(|desk| desk.clone())
            .ok_or_else(|| ServiceError::unavailable("starting", "the processor is starting"))
    }

    /// The deployment's totals: accounts, and per credit type the sums of balances and
    /// ledgers, over every partition (one question each, so no shard stops for more than one
    /// partition's pass), with the lowest `as_of_seq` among them.
    async fn totals(&self) -> Result<String, ServiceError> {
        let desk = self.desk()?;
        if !desk.health.is_ready() {
            let (_, reason) = desk.health.readiness();
            return Err(ServiceError::unavailable(
                "not_ready",
                format!("the processor is not caught up with its input yet ({reason})"),
            ));
        }
        let types = desk.catalog.credit_types.len();
        let mut accounts = 0u64;
        let mut sums = vec![TypeTotals::default(); types];
        let mut tops = vec![TopConsumers::new(TOP_CONSUMERS); types];
        let mut as_of_seq = u64::MAX;
        // Partitions another processor owns answer through it (`service::route`).
        for partition in 0..desk.settings.partitions {
            let part = desk.partition_totals(partition).await?;
            accounts += part.accounts;
            for (sum, part) in sums.iter_mut().zip(&part.types) {
                sum.add(part);
            }
            for (best, part) in tops.iter_mut().zip(&part.top) {
                best.merge(part);
            }
            as_of_seq = as_of_seq.min(part.as_of_seq);
        }
        let mut out = format!(
            "{{\"partitions\":{},\"accounts\":{accounts},\"as_of_seq\":{},\"credit_types\":[",
            desk.settings.partitions,
            if as_of_seq == u64::MAX { 0 } else { as_of_seq }
        );
        for (index, (t, sum)) in desk.catalog.credit_types.iter().zip(&sums).enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str("{\"credit_type\":");
            push_json_string(&mut out, &t.name);
            out.push_str(&format!(
                ",\"accounts\":{},\"balance\":\"{}\",\"held\":\"{}\",\"debt\":\"{}\",\
                 \"granted\":\"{}\",\"consumed\":\"{}\",\"expired\":\"{}\",\"voided\":\"{}\",\
                 \"adjusted\":\"{}\",\"opening_deferred\":\"{}\",\"granted_value\":\"{}\",\
                 \"recognized\":\"{}\",\"breakage\":\"{}\",\"removed\":\"{}\",\"deferred\":\"{}\"}}",
                sum.accounts,
                sum.balance,
                sum.held,
                sum.debt,
                sum.granted,
                sum.consumed,
                sum.expired,
                sum.voided,
                sum.adjusted,
                sum.opening_deferred,
                sum.granted_value,
                sum.recognized,
                sum.breakage,
                sum.removed,
                sum.deferred
            ));
        }
        out.push_str("],\"top_consumers\":[");
        let mut first = true;
        for (t, best) in desk.catalog.credit_types.iter().zip(&tops) {
            for (consumed, account) in &best.accounts {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                out.push_str("{\"credit_type\":");
                push_json_string(&mut out, &t.name);
                out.push_str(",\"account\":");
                push_json_string(&mut out, account);
                out.push_str(&format!(",\"consumed\":\"{consumed}\"}}"));
            }
        }
        out.push_str("],\"alerts_last_hour\":{");
        let counts = self.metrics.alerts_last_hour();
        for (index, (kind, count)) in ALERT_TYPES.iter().zip(counts).enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{kind}\":{count}"));
        }
        out.push_str("}}");
        Ok(out)
    }
}

/// The service's request for `account` with the query string's parameters, each one of
/// `allowed` and an unsigned integer (the service checks ranges and the account itself).
fn request_json(
    account: &str,
    query: Option<&str>,
    allowed: &[&str],
) -> Result<String, ServiceError> {
    let mut out = String::from("{\"account\":");
    push_json_string(&mut out, account);
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ServiceError::bad_request(
                "unknown_field",
                format!(
                    "{name}: not a parameter of this endpoint (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 20 {
            return Err(ServiceError::bad_request(
                "invalid_field",
                format!("{name}: expected an unsigned integer, found {value:?}"),
            ));
        }
        out.push(',');
        push_json_string(&mut out, &name);
        out.push(':');
        out.push_str(&value);
    }
    out.push('}');
    Ok(out)
}

fn not_found(path: &str) -> ServiceError {
    ServiceError::new(
        404,
        "not_found",
        format!(
            "no API endpoint {path}: GET /api/v1/accounts/<account>/balance|usage|statement, \
             POST /api/v1/price|authorize, GET /api/v1/totals"
        ),
    )
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(refused: &ServiceError) -> Response<Full<Bytes>> {
    let mut body = format!("{{\"error\":{{\"code\":{},\"reason\":", refused.code);
    push_json_string(&mut body, &refused.reason);
    body.push_str(",\"detail\":");
    push_json_string(&mut body, &refused.detail);
    body.push_str("}}");
    let status = StatusCode::from_u16(refused.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_become_the_service_request() {
        assert_eq!(
            request_json(
                "acct 1",
                Some("min_seq=12&period=3"),
                &["period", "min_seq"]
            )
            .unwrap(),
            r#"{"account":"acct 1","min_seq":12,"period":3}"#
        );
        let unknown = request_json("a", Some("limit=3"), &["min_seq"]).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.reason.as_ref()),
            (400, "unknown_field")
        );
        for bad in [
            "min_seq=",
            "min_seq=-1",
            "min_seq=1.5",
            "min_seq=x",
            "min_seq=123456789012345678901",
        ] {
            let refused = request_json("a", Some(bad), &["min_seq"]).unwrap_err();
            assert_eq!(
                (refused.code, refused.reason.as_ref()),
                (400, "invalid_field"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_token_is_required_exactly() {
        let api = Api::new(Some("s3cret".into()), Metrics::new(1, 1));
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(api.authorized(Some(&header("Bearer s3cret"))));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "bearer s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!api.authorized(Some(&header(wrong))), "{wrong}");
        }
        assert!(!api.authorized(None));
        assert!(Api::new(None, Metrics::new(1, 1)).authorized(None));
        assert!(
            Api::new(Some(String::new()), Metrics::new(1, 1)).authorized(None),
            "empty means none"
        );
    }
}
