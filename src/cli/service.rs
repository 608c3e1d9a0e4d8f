//! The service's CLI: `creditflow balance | authorize | usage | price | statement` and the
//! commands (`grant`, `adjust`, `void-grant`, `reverse`, `set-plan`, `set-policy`, `reserve`,
//! `commit`, `release`), each one request to the running processor's NATS service.
//!
//! Owns: the connection flags (the `nats` CLI's conventions: `--server`/`NATS_URL`, `--creds`,
//! `--user`/`--password`, `--timeout`), turning arguments into a request, and printing the
//! reply: a readable table, or with `--json` exactly the reply's body.
//!
//! Must never: print a password, or hang: every request has a timeout, and a refusal (a
//! `Nats-Service-Error` reply, no responder, a permissions violation) is a one-line error and
//! exit status 1.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

/// How to reach the service.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        short = 's',
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub server: String,
    /// A .creds file (JWT and seed).
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// How long to wait for the answer ("5s", "500ms").
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// The service's subject prefix (`service.subject_prefix` of the processor).
    #[arg(
        long,
        env = "CREDITFLOW_SERVICE_PREFIX",
        default_value = "creditflow.svc"
    )]
    pub prefix: String,
    /// Print the reply's JSON exactly as the service sent it.
    #[arg(long)]
    pub json: bool,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text).map_err(|e| e.to_string())
}

/// `--dim key=value`.
fn parse_dim(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

fn dims(pairs: &[(String, String)]) -> Option<Value> {
    (!pairs.is_empty()).then(|| {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    })
}

/// A command id for a command given none: unique enough for one operator's commands (the
/// time in nanoseconds and the process id). Printed with the result, so a retry can reuse it.
fn fresh_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{nanos:x}-{}", std::process::id())
}

#[derive(clap::Args, Debug)]
pub struct BalanceArgs {
    pub account: String,
    /// Answer only once the processor has applied the input through this stream sequence.
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args, Debug)]
pub struct AuthorizeArgs {
    pub account: String,
    pub meter: String,
    #[arg(allow_hyphen_values = true)]
    pub quantity: String,
    /// A dimension of the event (repeatable).
    #[arg(long = "dim", value_parser = parse_dim)]
    pub dims: Vec<(String, String)>,
    /// The event time (RFC 3339); default now.
    #[arg(long)]
    pub ts: Option<String>,
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    pub account: String,
    /// The period number (only the open period is in memory).
    #[arg(long)]
    pub period: Option<u32>,
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("for").required(true).args(["account", "plan"])))]
pub struct PriceArgs {
    pub meter: String,
    pub quantity: String,
    /// Price for this account (its period's cumulative quantity counts).
    #[arg(long)]
    pub account: Option<String>,
    /// Price for a new account on this plan.
    #[arg(long)]
    pub plan: Option<String>,
    #[arg(long = "dim", value_parser = parse_dim)]
    pub dims: Vec<(String, String)>,
    #[arg(long)]
    pub ts: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args, Debug)]
pub struct StatementArgs {
    pub account: String,
    /// Charges to list at most (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

/// What every command takes besides its own fields.
#[derive(clap::Args, Debug)]
pub struct CommandCommon {
    /// The command's id (its idempotency key: a retry with the same id is applied once);
    /// default a fresh one, printed with the result.
    #[arg(long)]
    pub id: Option<String>,
    /// The command's time (RFC 3339); default now.
    #[arg(long)]
    pub ts: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args, Debug)]
pub struct GrantArgs {
    pub account: String,
    pub amount: String,
    #[arg(long)]
    pub expires_at: Option<String>,
    #[arg(long)]
    pub effective_at: Option<String>,
    /// Money paid per credit (0 for free credits).
    #[arg(long)]
    pub cost_basis: Option<String>,
    #[arg(long)]
    pub credit_type: Option<String>,
    #[arg(long)]
    pub priority: Option<i64>,
    /// purchase, promotion, allowance, rollover, topup or adjustment.
    #[arg(long)]
    pub source: Option<String>,
    /// The meters it may pay for (repeatable); default all.
    #[arg(long = "scope")]
    pub scope: Vec<String>,
    /// The grant's id; default the command id.
    #[arg(long)]
    pub grant_id: Option<String>,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct AdjustArgs {
    pub account: String,
    /// Signed credits.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub credit_type: Option<String>,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct VoidGrantArgs {
    pub account: String,
    pub grant_id: String,
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct ReverseArgs {
    pub account: String,
    pub event_id: String,
    #[arg(long)]
    pub reason: Option<String>,
    /// The reversed event's `ts` (RFC 3339): a refusal then says whether its reversal window
    /// has passed rather than `unknown_event`.
    #[arg(long)]
    pub event_ts: Option<String>,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct SetPlanArgs {
    pub account: String,
    pub plan: String,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["policy", "clear"])))]
pub struct SetPolicyArgs {
    pub account: String,
    /// The policy as JSON, as in the catalog (`{"kind":"overage","overage_limit":"50",...}`).
    pub policy: Option<String>,
    /// Remove the account's override (the plan's policy applies again).
    #[arg(long)]
    pub clear: bool,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct ReserveArgs {
    pub account: String,
    pub meter: String,
    pub quantity: String,
    /// How long the hold lasts ("15m").
    #[arg(long)]
    pub ttl: String,
    /// The hold's id; default the command id.
    #[arg(long)]
    pub hold_id: Option<String>,
    #[arg(long = "dim", value_parser = parse_dim)]
    pub dims: Vec<(String, String)>,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct CommitArgs {
    pub account: String,
    pub hold_id: String,
    pub quantity: String,
    #[command(flatten)]
    pub common: CommandCommon,
}

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    pub account: String,
    pub hold_id: String,
    #[command(flatten)]
    pub common: CommandCommon,
}

/// One of the service's subcommands.
#[derive(Debug)]
pub enum ServiceCommand {
    Balance(BalanceArgs),
    Authorize(AuthorizeArgs),
    Usage(UsageArgs),
    Price(PriceArgs),
    Statement(StatementArgs),
    Grant(GrantArgs),
    Adjust(AdjustArgs),
    VoidGrant(VoidGrantArgs),
    Reverse(ReverseArgs),
    SetPlan(SetPlanArgs),
    SetPolicy(SetPolicyArgs),
    Reserve(ReserveArgs),
    Commit(CommitArgs),
    Release(ReleaseArgs),
}

/// A request: the endpoint's subject (query or command) and name, and the body.
struct Call<'a> {
    connection: &'a Connection,
    command: bool,
    endpoint: &'static str,
    body: Map<String, Value>,
}

/// A command's call: its own fields plus the account, the id (fresh unless given) and `ts`.
fn command<'a>(
    common: &'a CommandCommon,
    endpoint: &'static str,
    mut body: Map<String, Value>,
    account: &str,
) -> Call<'a> {
    body.insert("account".into(), account.into());
    body.insert(
        "id".into(),
        common.id.clone().unwrap_or_else(fresh_id).into(),
    );
    put(&mut body, "ts", common.ts.clone());
    Call {
        connection: &common.connection,
        command: true,
        endpoint,
        body,
    }
}

fn put(body: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        body.insert(key.to_string(), value.into());
    }
}

impl ServiceCommand {
    fn call(&self) -> anyhow::Result<Call<'_>> {
        let mut body = Map::new();
        let query = |connection, endpoint, body| Call {
            connection,
            command: false,
            endpoint,
            body,
        };

        Ok(match self {
            ServiceCommand::Balance(a) => {
                body.insert("account".into(), a.account.clone().into());
                put(&mut body, "min_seq", a.min_seq);
                query(&a.connection, "balance", body)
            }
            ServiceCommand::Authorize(a) => {
                body.insert("account".into(), a.account.clone().into());
                body.insert("meter".into(), a.meter.clone().into());
                body.insert("quantity".into(), a.quantity.clone().into());
                put(&mut body, "dims", dims(&a.dims));
                put(&mut body, "ts", a.ts.clone());
                put(&mut body, "min_seq", a.min_seq);
                query(&a.connection, "authorize", body)
            }
            ServiceCommand::Usage(a) => {
                body.insert("account".into(), a.account.clone().into());
                put(&mut body, "period", a.period);
                put(&mut body, "min_seq", a.min_seq);
                query(&a.connection, "usage", body)
            }
            ServiceCommand::Price(a) => {
                body.insert("meter".into(), a.meter.clone().into());
                body.insert("quantity".into(), a.quantity.clone().into());
                put(&mut body, "account", a.account.clone());
                put(&mut body, "plan", a.plan.clone());
                put(&mut body, "dims", dims(&a.dims));
                put(&mut body, "ts", a.ts.clone());
                query(&a.connection, "price", body)
            }
            ServiceCommand::Statement(a) => {
                body.insert("account".into(), a.account.clone().into());
                body.insert("limit".into(), a.limit.into());
                put(&mut body, "min_seq", a.min_seq);
                query(&a.connection, "statement", body)
            }
            ServiceCommand::Grant(a) => {
                body.insert("amount".into(), a.amount.clone().into());
                put(&mut body, "expires_at", a.expires_at.clone());
                put(&mut body, "effective_at", a.effective_at.clone());
                put(&mut body, "cost_basis", a.cost_basis.clone());
                put(&mut body, "credit_type", a.credit_type.clone());
                put(&mut body, "priority", a.priority);
                put(&mut body, "source", a.source.clone());
                put(&mut body, "grant_id", a.grant_id.clone());
                if !a.scope.is_empty() {
                    body.insert("scope".into(), json!(a.scope));
                }
                command(&a.common, "grant", body, &a.account)
            }
            ServiceCommand::Adjust(a) => {
                body.insert("amount".into(), a.amount.clone().into());
                body.insert("reason".into(), a.reason.clone().into());
                put(&mut body, "credit_type", a.credit_type.clone());
                command(&a.common, "adjust", body, &a.account)
            }
            ServiceCommand::VoidGrant(a) => {
                body.insert("grant_id".into(), a.grant_id.clone().into());
                put(&mut body, "reason", a.reason.clone());
                command(&a.common, "void_grant", body, &a.account)
            }
            ServiceCommand::Reverse(a) => {
                body.insert("event_id".into(), a.event_id.clone().into());
                put(&mut body, "event_ts", a.event_ts.clone());
                put(&mut body, "reason", a.reason.clone());
                command(&a.common, "reverse", body, &a.account)
            }
            ServiceCommand::SetPlan(a) => {
                body.insert("plan".into(), a.plan.clone().into());
                command(&a.common, "set_plan", body, &a.account)
            }
            ServiceCommand::SetPolicy(a) => {
                let policy = match (&a.policy, a.clear) {
                    (Some(text), false) => {
                        serde_json::from_str::<Value>(text).context("the policy is not JSON")?
                    }
                    _ => Value::Null,
                };
                body.insert("policy".into(), policy);
                command(&a.common, "set_policy", body, &a.account)
            }
            ServiceCommand::Reserve(a) => {
                body.insert("meter".into(), a.meter.clone().into());
                body.insert("quantity".into(), a.quantity.clone().into());
                body.insert("ttl".into(), a.ttl.clone().into());
                put(&mut body, "hold_id", a.hold_id.clone());
                put(&mut body, "dims", dims(&a.dims));
                command(&a.common, "reserve", body, &a.account)
            }
            ServiceCommand::Commit(a) => {
                body.insert("hold_id".into(), a.hold_id.clone().into());
                body.insert("quantity".into(), a.quantity.clone().into());
                command(&a.common, "commit", body, &a.account)
            }
            ServiceCommand::Release(a) => {
                body.insert("hold_id".into(), a.hold_id.clone().into());
                command(&a.common, "release", body, &a.account)
            }
        })
    }
}

/// Runs one subcommand: sends its request, prints the reply.
pub fn run(command: ServiceCommand) -> anyhow::Result<()> {
    let call = command.call()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reply = runtime.block_on(request(&call))?;
    if call.connection.json {
        println!("{reply}");
        return Ok(());
    }
    let value: Value = serde_json::from_str(&reply).context("the reply is not JSON")?;
    print!("{}", render(call.endpoint, &value));
    Ok(())
}

/// Connects with the connection flags. The server errors the connection receives (a
/// permissions violation comes that way, not as a reply) are collected in the second value.
pub async fn connect_watching(
    connection: &Connection,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let server_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = server_errors.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name("creditflow-cli")
        .connection_timeout(connection.timeout)
        .request_timeout(Some(connection.timeout))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(error.to_string());
                    }
                }
            }
        });
    options = match (&connection.user, &connection.password) {
        (Some(user), Some(password)) => options.user_and_password(user.clone(), password.clone()),
        (Some(_), None) | (None, Some(_)) => bail!("--user and --password go together"),
        (None, None) => options,
    };
    if let Some(creds) = &connection.creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading {}", creds.display()))?;
    }
    let servers: Vec<async_nats::ServerAddr> = connection
        .server
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("server {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    let client = tokio::time::timeout(connection.timeout, options.connect(servers))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no NATS server answered at {} within {:?}",
                connection.server,
                connection.timeout
            )
        })?
        .with_context(|| format!("connecting to {}", connection.server))?;
    Ok((client, server_errors))
}

/// Connects with the connection flags.
pub async fn connect(connection: &Connection) -> anyhow::Result<async_nats::Client> {
    Ok(connect_watching(connection).await?.0)
}

/// Sends the request and returns the reply's body, or the service's error as an error.
async fn request(call: &Call<'_>) -> anyhow::Result<String> {
    let connection = call.connection;
    let (client, server_errors) = connect_watching(connection).await?;
    let subject = if call.command {
        crate::service::command_subject(&connection.prefix, call.endpoint)
    } else {
        crate::service::query_subject(&connection.prefix, call.endpoint)
    };
    let body = Value::Object(call.body.clone()).to_string();
    let result = client.request(subject.clone(), body.into()).await;
    // A permissions violation arrives as a server error on the connection, not as a reply.
    let violations = || {
        server_errors
            .lock()
            .map(|e| {
                e.iter()
                    .find(|e| e.to_lowercase().contains("permission"))
                    .cloned()
            })
            .unwrap_or_default()
    };
    let message = match result {
        Ok(message) => message,
        Err(error) => {
            if let Some(violation) = violations() {
                bail!("permission denied: {violation}");
            }
            match error.kind() {
                async_nats::RequestErrorKind::NoResponders => bail!(
                    "no creditflow service answers on {subject} (is `creditflow run` running, with \
                     [service] enabled and this prefix?)"
                ),
                async_nats::RequestErrorKind::TimedOut => {
                    bail!("no answer on {subject} within {:?}", connection.timeout)
                }
                _ => bail!("request on {subject} failed: {error}"),
            }
        }
    };
    if let Some((status, code)) = crate::service::error::reply_error(&message) {
        bail!("{code} {status}");
    }
    Ok(String::from_utf8_lossy(&message.payload).into_owned())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A reply as a readable table.
pub fn render(endpoint: &str, reply: &Value) -> String {
    let mut out = String::new();
    match endpoint {
        "balance" => render_balance(&mut out, reply),
        "authorize" => {
            let verdict = if reply["allowed"] == Value::Bool(true) {
                "allowed".to_string()
            } else {
                format!("refused ({})", text(&reply["reason"]))
            };
            let _ = writeln!(
                out,
                "{} {} {} at {}: {verdict}; costs {} {}",
                text(&reply["account"]),
                text(&reply["quantity"]),
                text(&reply["meter"]),
                text(&reply["ts"]),
                text(&reply["credits"]),
                text(&reply["credit_type"]),
            );
            let _ = writeln!(
                out,
                "  available {} {}; at most {} {} now",
                text(&reply["available"]),
                text(&reply["credit_type"]),
                match &reply["max_quantity"] {
                    Value::Null => "unlimited".to_string(),
                    other => text(other),
                },
                text(&reply["meter"]),
            );
            render_price(&mut out, &reply["price"]);
            if let Some(draws) = reply["draws"].as_array().filter(|d| !d.is_empty()) {
                let drawn: Vec<String> = draws
                    .iter()
                    .map(|d| format!("{} {}", text(&d["grant_id"]), text(&d["credits"])))
                    .collect();
                let _ = writeln!(out, "  would draw: {}", drawn.join(", "));
            }
            for (key, label) in [("overage", "would owe"), ("topup", "would top up")] {
                if reply[key].as_str().is_some_and(|v| v != "0") {
                    let _ = writeln!(out, "  {label} {}", text(&reply[key]));
                }
            }
            let _ = writeln!(
                out,
                "  (as of input sequence {})",
                text(&reply["as_of_seq"])
            );
        }
        "usage" => {
            let _ = writeln!(
                out,
                "{} period {} ({} .. {}), as of input sequence {}",
                text(&reply["account"]),
                text(&reply["period_number"]),
                text(&reply["period_start"]),
                text(&reply["period_end"]),
                text(&reply["as_of_seq"])
            );
            let _ = writeln!(
                out,
                "  {:<20} {:<16} {:>16} {:>16}",
                "meter", "credit_type", "quantity", "credits"
            );
            for m in reply["meters"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  {:<20} {:<16} {:>16} {:>16}",
                    text(&m["meter"]),
                    text(&m["credit_type"]),
                    text(&m["quantity"]),
                    text(&m["credits"])
                );
            }
            let _ = writeln!(out, "  invoice lines so far:");
            for l in reply["lines"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "    {:<15} {:<16} quantity {:>12} credits {:>14} money {} {}{}",
                    text(&l["kind"]),
                    text(&l["meter"]),
                    text(&l["quantity"]),
                    text(&l["credits"]),
                    text(&l["money"]),
                    text(&l["currency"]),
                    if l["unflushed"] == Value::Bool(true) {
                        " (changed since its last version)"
                    } else {
                        ""
                    }
                );
            }
        }
        "price" => {
            let _ = writeln!(
                out,
                "{} {} at {} for {}: {} {}",
                text(&reply["quantity"]),
                text(&reply["meter"]),
                text(&reply["ts"]),
                match (&reply["account"], &reply["plan"]) {
                    (Value::String(a), _) => format!("account {a}"),
                    (_, Value::String(p)) => format!("a new account on plan {p}"),
                    _ => "a new account".into(),
                },
                text(&reply["credits"]),
                text(&reply["credit_type"]),
            );
            render_price(&mut out, &reply["price"]);
        }
        "statement" => {
            let _ = writeln!(
                out,
                "{}: recent charges, newest first (as of input sequence {})",
                text(&reply["account"]),
                text(&reply["as_of_seq"])
            );
            for c in reply["charges"].as_array().into_iter().flatten() {
                let draws: Vec<String> = c["draws"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        format!(
                            "{} {} (basis {})",
                            text(&d["grant_id"]),
                            text(&d["credits"]),
                            text(&d["cost_basis"])
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  seq {:<8} {}  {} {}: {} {} -> {} credits{}{}\n      paid from: {}",
                    text(&c["seq"]),
                    text(&c["ts"]),
                    text(&c["kind"]),
                    text(&c["event_id"]),
                    text(&c["quantity"]),
                    text(&c["meter"]),
                    text(&c["credits"]),
                    if c["overage"].as_str().is_some_and(|o| o != "0") {
                        format!(", overage {}", text(&c["overage"]))
                    } else {
                        String::new()
                    },
                    if c["reversed"] == Value::Bool(true) {
                        " (reversed)"
                    } else {
                        ""
                    },
                    if draws.is_empty() {
                        "-".to_string()
                    } else {
                        draws.join(", ")
                    }
                );
            }
        }
        _ => {
            // A command.
            let result = &reply["result"];
            if result.is_null() {
                let _ = writeln!(
                    out,
                    "already applied earlier (its result is in the output stream)"
                );
            } else {
                let status = text(&result["status"]);
                let reason = if status == "rejected" {
                    format!(" ({})", text(&result["reason"]))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{} {} {}: {status}{reason}{}",
                    text(&result["command"]),
                    text(&result["account"]),
                    text(&result["command_id"]),
                    if reply["duplicate"] == Value::Bool(true) {
                        " (a retry: applied once, earlier)"
                    } else {
                        ""
                    }
                );
                for (key, value) in result.as_object().into_iter().flatten() {
                    if ![
                        "type",
                        "id",
                        "account",
                        "seq",
                        "ts",
                        "command",
                        "command_id",
                        "status",
                        "reason",
                    ]
                    .contains(&key.as_str())
                    {
                        let _ = writeln!(out, "  {key}: {}", text(value));
                    }
                }
            }
            if !reply["balance"].is_null() {
                render_balance(&mut out, &reply["balance"]);
            }
        }
    }
    out
}

fn render_price(out: &mut String, price: &Value) {
    let _ = writeln!(
        out,
        "  price: {} model from {}, rate {}, multiplier {}{}{}{}; billed {}, exact {} -> {}",
        text(&price["model"]),
        text(&price["version_from"]),
        match &price["rate"] {
            Value::Null => "by tier".into(),
            other => text(other),
        },
        text(&price["multiplier"]),
        if price["dimension_rule"].is_null() {
            String::new()
        } else {
            format!(", dimension rule #{}", text(&price["dimension_rule"]))
        },
        if price["window"].is_null() {
            String::new()
        } else {
            format!(", time window #{}", text(&price["window"]))
        },
        if price["minimum_applied"] == Value::Bool(true) {
            ", minimum charge"
        } else {
            ""
        },
        text(&price["billed_quantity"]),
        text(&price["unrounded"]),
        text(&price["cost"]),
    );
}

fn render_balance(out: &mut String, b: &Value) {
    let _ = writeln!(
        out,
        "{} on plan {}, clock {}, period {} .. {} (as of input sequence {})",
        text(&b["account"]),
        text(&b["plan"]),
        text(&b["clock"]),
        text(&b["period_start"]),
        text(&b["period_end"]),
        text(&b["as_of_seq"])
    );
    let available: Vec<&Value> = b["available"].as_array().into_iter().flatten().collect();
    let _ = writeln!(
        out,
        "  {:<16} {:>14} {:>14} {:>12} {:>12}",
        "credit_type", "balance", "available", "held", "debt"
    );
    for entry in b["balances"].as_array().into_iter().flatten() {
        let credit_type = text(&entry["credit_type"]);
        let avail = available
            .iter()
            .find(|a| text(&a["credit_type"]) == credit_type)
            .map_or("-".to_string(), |a| text(&a["available"]));
        let _ = writeln!(
            out,
            "  {:<16} {:>14} {:>14} {:>12} {:>12}",
            credit_type,
            text(&entry["balance"]),
            avail,
            text(&entry["held"]),
            text(&entry["debt"])
        );
    }
    let grants: Vec<&Value> = b["grants"].as_array().into_iter().flatten().collect();
    if !grants.is_empty() {
        let _ = writeln!(out, "  grants (burn order):");
        for g in grants {
            let _ = writeln!(
                out,
                "    {:<32} {:<10} {:<8} {:>12} of {:>12} {:<14} priority {:>4}  expires {}  cost basis {}",
                text(&g["grant_id"]),
                text(&g["source"]),
                text(&g["status"]),
                text(&g["remaining"]),
                text(&g["amount"]),
                text(&g["credit_type"]),
                text(&g["priority"]),
                match &g["expires_at"] {
                    Value::Null => "never".into(),
                    other => text(other),
                },
                text(&g["cost_basis"])
            );
        }
    }
    for h in b["holds"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  hold {} on {}: {} held until {}",
            text(&h["hold_id"]),
            text(&h["meter"]),
            text(&h["credits_held"]),
            text(&h["expires_at"])
        );
    }
    for a in b["alerts"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  alert {} on {}: {} (went low {}, recovered {})",
            text(&a["alert"]),
            text(&a["credit_type"]),
            if a["below"] == Value::Bool(true) {
                "low now"
            } else {
                "not low"
            },
            text(&a["lows"]),
            text(&a["recoveries"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balance_table_lists_the_alert_states() {
        let reply = serde_json::json!({
            "account": "a", "plan": "pro", "clock": "t", "period_start": "s", "period_end": "e",
            "as_of_seq": 7, "balances": [], "grants": [], "holds": [], "available": [],
            "alerts": [
                {"credit_type": "credit", "alert": "low_10", "below": true, "lows": 2, "recoveries": 1},
                {"credit_type": "credit", "alert": "depleted", "below": false, "lows": 1, "recoveries": 1}
            ]
        });
        let table = render("balance", &reply);
        assert!(
            table.contains("  alert low_10 on credit: low now (went low 2, recovered 1)"),
            "{table}"
        );
        assert!(
            table.contains("  alert depleted on credit: not low (went low 1, recovered 1)"),
            "{table}"
        );
    }
}
