//! The query endpoints (`balance`, `authorize`, `usage`, `price`, `statement`): each request
//! read and checked here, on the service's thread, into a [`Prepared`] query: the question its
//! partition's shard answers (a closure that writes the reply from the partition's state), or
//! its answer already (a refusal, a price for a plan).
//!
//! Owns: what each query asks of its partition and the reply it writes from what it sees.
//!
//! Must never: touch a partition here (the closure runs on the thread that holds it), or
//! accept a request the endpoint's fields do not describe (every refusal is a 400 naming the
//! field, from [`super::request`]).

use super::reply;
use super::request::{self, Fields};
use super::{
    priced_refusal, refused_event, Desk, ServiceError, STATEMENT_LIMIT_DEFAULT, STATEMENT_LIMIT_MAX,
};
use crate::pipeline::question::Seen;

/// The fields an `authorize` request may have.
const AUTHORIZE_FIELDS: &[&str] = &["account", "meter", "quantity", "dims", "ts", "min_seq"];

/// What a query's partition answers with, on the thread that holds it.
pub type Answer = Box<dyn FnOnce(Seen<'_>) -> Result<String, ServiceError> + Send>;

/// A query read and checked, ready to be answered.
pub enum Prepared {
    /// Answered without a partition.
    Answered(Result<String, ServiceError>),
    /// To be answered by `partition`'s shard once it has applied through `min_seq`.
    Ask {
        partition: u32,
        min_seq: u64,
        answer: Answer,
    },
}

impl Prepared {
    fn ask(
        partition: u32,
        min_seq: u64,
        answer: impl FnOnce(Seen<'_>) -> Result<String, ServiceError> + Send + 'static,
    ) -> Prepared {
        Prepared::Ask {
            partition,
            min_seq,
            answer: Box::new(answer),
        }
    }
}

impl Desk {
    /// The query `name` (one of [`super::QUERIES`]) read from `payload`, or its refusal: 503
    /// `not_ready` while the processor is not caught up.
    pub(crate) fn prepare(&self, name: &str, payload: &[u8]) -> Prepared {
        if let Err(error) = self.ready() {
            return Prepared::Answered(Err(error));
        }
        let prepared = match name {
            "balance" => self.balance(payload),
            "authorize" => self.authorize(payload),
            "usage" => self.usage(payload),
            "price" => self.price(payload),
            "statement" => self.statement(payload),
            _ => Err(ServiceError::new(
                500,
                "internal",
                format!("no endpoint {name}"),
            )),
        };
        prepared.unwrap_or_else(|error| Prepared::Answered(Err(error)))
    }

    fn balance(&self, payload: &[u8]) -> Result<Prepared, ServiceError> {
        let (account, min_seq) = match request::account_query(payload) {
            Some(query) => query,
            None => {
                let fields = Fields::parse(payload, &["account", "min_seq"])?;
                (fields.account()?, fields.min_seq()?)
            }
        };
        let catalog = self.catalog.clone();
        Ok(Prepared::ask(
            self.partition(&account),
            min_seq,
            move |seen| {
                let state = seen
                    .partition
                    .account(&account)
                    .ok_or_else(|| ServiceError::unknown_account(&account))?;
                Ok(reply::balance(
                    &catalog,
                    seen.partition,
                    state,
                    seen.as_of_seq,
                ))
            },
        ))
    }

    fn authorize(&self, payload: &[u8]) -> Result<Prepared, ServiceError> {
        let now = crate::pipeline::ticks::wall_clock();
        let (account, min_seq, usage) = match request::authorize_query(payload, now, &self.catalog)
        {
            Some(query) => query,
            None => {
                let fields = Fields::parse(payload, AUTHORIZE_FIELDS)?;
                let account = fields.account()?;
                let min_seq = fields.min_seq()?;
                let (_, usage) =
                    request::usage_request(&fields, &account, &["min_seq"], now, &self.catalog)?;
                (account, min_seq, usage)
            }
        };
        let catalog = self.catalog.clone();
        Ok(Prepared::ask(
            self.partition(&account),
            min_seq,
            move |seen| {
                let answer = seen
                    .partition
                    .authorize(&catalog, &usage, now)
                    .map_err(refused_event)?;
                Ok(reply::authorization(
                    &catalog,
                    &account,
                    &catalog.meter(usage.meter).name,
                    usage.quantity,
                    &answer,
                    seen.as_of_seq,
                ))
            },
        ))
    }

    fn usage(&self, payload: &[u8]) -> Result<Prepared, ServiceError> {
        let fields = Fields::parse(payload, &["account", "period", "min_seq"])?;
        let account = fields.account()?;
        let period = fields
            .integer("period", u64::from(u32::MAX))?
            .map(|p| p as u32);
        let catalog = self.catalog.clone();
        Ok(Prepared::ask(
            self.partition(&account),
            fields.min_seq()?,
            move |seen| {
                use crate::engine::query::UsageError;
                let state = seen
                    .partition
                    .account(&account)
                    .ok_or_else(|| ServiceError::unknown_account(&account))?;
                match seen.partition.period_usage(&catalog, &account, period) {
                    Ok(usage) => Ok(reply::usage(&catalog, state, &usage, seen.as_of_seq)),
                    Err(UsageError::UnknownAccount) => Err(ServiceError::unknown_account(&account)),
                    Err(UsageError::PeriodNotInMemory { current }) => Err(ServiceError::new(
                        404,
                        "period_not_in_memory",
                        format!(
                            "period {} is not the open one ({current}); a closed period's final \
                         invoice lines are in the output stream",
                            period.unwrap_or_default()
                        ),
                    )),
                }
            },
        ))
    }

    fn price(&self, payload: &[u8]) -> Result<Prepared, ServiceError> {
        let fields = Fields::parse(
            payload,
            &[
                "account", "plan", "meter", "quantity", "dims", "ts", "min_seq",
            ],
        )?;
        let plan = fields.string("plan")?;
        let account = match fields.get("account") {
            Some(_) => Some(fields.account()?),
            None => None,
        };
        if plan.is_some() && account.is_some() {
            return Err(ServiceError::bad_request(
                "invalid_field",
                "plan: give an account or a plan, not both",
            ));
        }
        if let Some(plan) = &plan {
            if self.catalog.plan_id(plan).is_none() {
                return Err(ServiceError::bad_request(
                    "unknown_plan",
                    format!("plan: no plan {plan:?} in the catalog"),
                ));
            }
        }
        let now = crate::pipeline::ticks::wall_clock();
        let placeholder = "price_request";
        let (_, usage) = request::usage_request(
            &fields,
            account.as_deref().unwrap_or(placeholder),
            &["plan", "min_seq"],
            now,
            &self.catalog,
        )?;
        let catalog = self.catalog.clone();
        let Some(account) = account else {
            // A new account on the plan: no cumulative quantity; no partition is needed.
            let priced = crate::catalog::pricing::price(
                &catalog,
                &crate::catalog::pricing::PriceRequest {
                    meter: usage.meter,
                    quantity: usage.quantity,
                    dims: &usage.dims,
                    ts: usage.ts,
                    cumulative: crate::decimal::Quantity::ZERO,
                },
            )
            .map_err(|e| priced_refusal(&catalog, usage.meter, e))?;
            return Ok(Prepared::Answered(Ok(reply::price_reply(
                &catalog,
                usage.meter,
                usage.quantity,
                usage.ts,
                None,
                plan.as_deref(),
                &priced,
                None,
            ))));
        };
        Ok(Prepared::ask(
            self.partition(&account),
            fields.min_seq()?,
            move |seen| {
                let priced = seen
                    .partition
                    .price_for(
                        &catalog,
                        Some(&account),
                        usage.meter,
                        usage.quantity,
                        &usage.dims,
                        usage.ts,
                    )
                    .map_err(|e| priced_refusal(&catalog, usage.meter, e))?;
                Ok(reply::price_reply(
                    &catalog,
                    usage.meter,
                    usage.quantity,
                    usage.ts,
                    Some(&account),
                    None,
                    &priced,
                    Some(seen.as_of_seq),
                ))
            },
        ))
    }

    fn statement(&self, payload: &[u8]) -> Result<Prepared, ServiceError> {
        let fields = Fields::parse(payload, &["account", "limit", "min_seq"])?;
        let account = fields.account()?;
        let limit = fields
            .integer("limit", STATEMENT_LIMIT_MAX)?
            .unwrap_or(STATEMENT_LIMIT_DEFAULT) as usize;
        let catalog = self.catalog.clone();
        Ok(Prepared::ask(
            self.partition(&account),
            fields.min_seq()?,
            move |seen| {
                let entries = seen
                    .partition
                    .statement(&catalog, &account, limit)
                    .ok_or_else(|| ServiceError::unknown_account(&account))?;
                Ok(reply::statement(
                    &catalog,
                    &account,
                    &entries,
                    seen.as_of_seq,
                ))
            },
        ))
    }
}
