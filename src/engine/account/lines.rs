//! Invoice lines of the open period and the outputs an account emits (SEMANTICS §11, §14).

use super::*;

impl Account {
    pub(super) fn line(
        &mut self,
        kind: LineKind,
        meter: Option<MeterId>,
        credit_type: CreditTypeId,
    ) -> &mut Line {
        let position = self
            .lines
            .iter()
            .position(|l| l.kind == kind && l.meter == meter && l.credit_type == credit_type);
        let index = match position {
            Some(index) => index,
            None => {
                let index = self.lines.len();
                insert_one(
                    &mut self.lines,
                    index,
                    Line {
                        kind,
                        meter,
                        credit_type,
                        quantity: Quantity::ZERO,
                        credits: Credits::ZERO,
                        money: Revenue::ZERO,
                        version: 0,
                        dirty: false,
                    },
                );
                index
            }
        };
        &mut self.lines[index]
    }

    /// Adds to a line and schedules its flush.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn book(
        &mut self,
        catalog: &Catalog,
        kind: LineKind,
        meter: Option<MeterId>,
        credit_type: CreditTypeId,
        quantity: Quantity,
        credits: Credits,
        money: Revenue,
    ) {
        let line = self.line(kind, meter, credit_type);
        line.quantity += quantity;
        line.credits += credits;
        line.money += money;
        line.dirty = true;
        if self.flush_due == NO_TIMER {
            let interval = catalog.rules.flush_interval.millis().max(1);
            let next = (self.clock.millis().div_euclid(interval) + 1) * interval;
            self.flush_due = Instant(next);
        }
    }

    pub(super) fn emit_line(
        &self,
        ctx: &mut Context<'_>,
        line: &Line,
        ts: Instant,
        is_final: bool,
    ) {
        let catalog = ctx.catalog;
        let period_start = self.period_start;
        let credit_type = catalog.credit_type(line.credit_type).name.clone();
        let meter = line
            .meter
            .map_or_else(|| "-".to_string(), |m| catalog.meter(m).name.clone());
        let line_id = format!(
            "line:{}:{}:{}:{}:{}",
            self.id,
            self.period_number,
            line.kind.name(),
            meter,
            credit_type
        );
        let body = Body::InvoiceLine(InvoiceLine {
            line_id: line_id.clone(),
            version: line.version,
            is_final,
            period_start,
            period_end: self.period_end,
            kind: line.kind.name(),
            meter,
            credit_type,
            quantity: line.kind.has_quantity().then_some(line.quantity),
            credits: line.credits,
            money: line
                .money
                .round_money(catalog.currency.scale, catalog.currency.rounding),
            currency: catalog.currency.code.clone(),
        });
        ctx.out.push(Output {
            id: format!("{line_id}:v{}", line.version),
            account: Some(self.id.to_string()),
            seq: ctx.seq,
            ts: Some(ts),
            body,
        });
    }

    pub(super) fn flush(&mut self, ctx: &mut Context<'_>, ts: Instant) {
        self.flush_due = NO_TIMER;
        self.lines.sort_by_key(Line::order_key);
        let mut lines = std::mem::take(&mut self.lines);
        for line in lines.iter_mut().filter(|l| l.dirty) {
            line.version += 1;
            line.dirty = false;
            self.emit_line(ctx, line, ts, false);
        }
        self.lines = lines;
    }

    // ---------------------------------------------------------------- outputs

    pub(super) fn emit(&self, ctx: &mut Context<'_>, id: String, ts: Instant, body: Body) {
        ctx.out.push(Output {
            id,
            account: Some(self.id.to_string()),
            seq: ctx.seq,
            ts: Some(ts),
            body,
        });
    }

    pub(super) fn emit_result(
        &self,
        ctx: &mut Context<'_>,
        command: &'static str,
        command_id: &str,
        ts: Instant,
        rejected: Option<&'static str>,
        detail: ResultDetail,
    ) {
        let id = format!("result:{}:{}:{}", self.id, command_id, ctx.seq);
        self.emit(
            ctx,
            id,
            ts,
            Body::CommandResult(CommandResult {
                command,
                command_id: command_id.to_string(),
                rejected,
                detail,
            }),
        );
    }
}
