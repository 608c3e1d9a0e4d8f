use super::*;

const HEADER: &str = r#"
default_plan = "payg"
[currency]
code = "USD"
[[credit_types]]
name = "credit"
scale = 6
[[plans]]
name = "payg"
"#;

fn shipped_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml")
}

fn shipped() -> Catalog {
    match from_path(&shipped_path()) {
        Ok(catalog) => catalog,
        Err(errors) => panic!("the shipped catalog must load:\n{errors}"),
    }
}

fn errors_of(text: &str) -> Vec<CatalogError> {
    match from_str(text) {
        Ok(_) => panic!("expected errors, the catalog loaded:\n{text}"),
        Err(CatalogErrors(errors)) => errors,
    }
}

/// The keys of `errors`, sorted (the walk's own order is not part of the contract).
fn keys_of(errors: &[CatalogError]) -> Vec<&str> {
    let mut keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    keys
}

fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
    keys.sort_unstable();
    keys
}

fn d(text: &str) -> Dec {
    text.parse().unwrap()
}

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn at_time(text: &str) -> Instant {
    text.parse().unwrap()
}

#[test]
fn shipped_catalog_loads_with_every_feature() {
    let catalog = shipped();
    assert_eq!(catalog.currency.code, "USD");
    assert_eq!(catalog.currency.scale, 2);
    assert_eq!(
        catalog.rules,
        Rules::default(),
        "[rules] spells out the defaults"
    );
    let names: Vec<_> = catalog
        .credit_types
        .iter()
        .map(|t| (t.name.as_str(), t.scale))
        .collect();
    assert_eq!(names, [("credit", 6), ("compute_credit", 4)]);
    let meter = |name: &str| catalog.meter(catalog.meter_id(name).unwrap());

    let api = meter("api_call");
    assert_eq!(api.versions.len(), 2);
    assert_eq!(
        api.versions[1].model,
        PriceModel::Unit { rate: d("0.0015") }
    );
    assert_eq!(
        api.versions[1].effective_from,
        at_time("2026-07-01T00:00:00Z")
    );

    let llm = meter("llm_token");
    assert!(llm.versions[0].dimension_required);
    assert_eq!(llm.versions[0].dimensions.len(), 4);
    assert_eq!(
        llm.versions[0].dimensions[0].matches,
        [
            ("model".to_string(), "large".to_string()),
            ("region".to_string(), "eu".to_string())
        ]
    );

    let gpu = meter("gpu_second");
    assert_eq!(catalog.credit_type(gpu.credit_type).name, "compute_credit");
    let v = &gpu.versions[0];
    assert_eq!(v.increment, Some(d("60")));
    assert_eq!(v.minimum, Some(d("0.6")));
    assert_eq!(v.time_zone.name(), "Europe/Paris");
    assert_eq!(v.windows[0].days, 0b0001_1111);
    assert_eq!(v.windows[0].from_ms, 9 * 3_600_000);
    assert_eq!(v.windows[1].to_ms, DAY_MS);
    let PriceModel::Graduated { tiers } = &v.model else {
        panic!("gpu is graduated")
    };
    assert_eq!(tiers.len(), 3);
    assert_eq!(tiers[2].up_to, None);

    assert!(matches!(
        meter("storage_gb_hour").versions[0].model,
        PriceModel::Volume { .. }
    ));
    assert_eq!(meter("storage_gb_hour").rounding, Rounding::Up);
    assert_eq!(meter("export").rounding, Rounding::HalfUp);

    let plan = |name: &str| catalog.plan(catalog.plan_id(name).unwrap());
    assert_eq!(catalog.default_plan, catalog.plan_id("payg").unwrap());
    assert_eq!(plan("payg").policy, Policy::Reject);
    let starter = plan("starter");
    assert_eq!(starter.allowances[0].rollover_cap, c("5000"));
    assert_eq!(starter.expiring_lead, Some(Span(3 * DAY_MS)));
    assert_eq!(starter.alerts[1].threshold, Threshold::Percent(d("25")));
    assert_eq!(
        starter.policy,
        Policy::Overage(Overage {
            limit: c("500"),
            price: c("0.012")
        })
    );
    let pro = plan("pro");
    assert_eq!(pro.period, PeriodRule::Month { anchor_day: 15 });
    assert_eq!(
        pro.allowances[1].scope,
        Some(vec![catalog.meter_id("gpu_second").unwrap()])
    );
    let Policy::AutoTopup(rule) = &pro.policy else {
        panic!("pro tops up")
    };
    assert_eq!(rule.amount, TopupAmount::Fixed(c("1000")));
    assert_eq!(rule.cooldown, Span(3_600_000));
    assert_eq!(
        rule.fallback,
        Fallback::Overage(Overage {
            limit: c("500"),
            price: c("0.012")
        })
    );
    let weekly = plan("team_weekly");
    assert_eq!(weekly.period, PeriodRule::Week { anchor_weekday: 0 });
    let Policy::AutoTopup(rule) = &weekly.policy else {
        panic!("weekly tops up")
    };
    assert_eq!(rule.amount, TopupAmount::Target(c("2000")));
    assert_eq!(rule.fallback, Fallback::Reject);
    assert_eq!(rule.priority, TOPUP_PRIORITY_DEFAULT);
    assert_eq!(plan("daily_test").period, PeriodRule::Day);
}

#[test]
fn minimal_catalog_takes_every_default() {
    let catalog = from_str(HEADER).unwrap();
    assert_eq!(catalog.currency.rounding, Rounding::HalfUp);
    assert_eq!(catalog.currency.scale, 2);
    let plan = &catalog.plans[0];
    assert_eq!(plan.period, PeriodRule::Month { anchor_day: 1 });
    assert_eq!(plan.time_zone.name(), "UTC");
    assert_eq!(plan.price, Price::ZERO);
    assert_eq!(plan.policy, Policy::Reject);
    assert_eq!(plan.expiring_lead, None);
    assert!(catalog.meters.is_empty());
}

/// One catalog, many different mistakes: all of them come back, each at its key.
#[test]
fn every_mistake_is_reported_at_once() {
    let text = r#"
default_plan = "nope"
colour = "blue"
[currency]
code = "usd"
scale = 12
[rules]
future_max = "5 minutes"
flush_interval = "0"
[[credit_types]]
name = "credit"
scale = 6
[[credit_types]]
name = "credit"
scale = 2
[[meters]]
name = "api_call"
credit_type = "gold"
rounding = "bankers"
  [[meters.versions]]
  effective_from = "2026-02-01T00:00:00Z"
  model = "unit"
  rate = 0.002
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "-1"
[[meters]]
name = "gpu"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
  time_zone = "Mars/Olympus"
[[meters.versions.tiers]]
up_to = "100"
rate = "0.0000000001"
[[meters.versions.tiers]]
up_to = "50"
rate = "1"
[[meters.versions.tiers]]
rate = "0.5"
[[meters.versions.dimensions]]
match = { model = "large" }
rate = "2"
[[meters.versions.windows]]
name = "peak"
days = ["mon", "mon"]
from = "18:00"
to = "09:00"
multiplier = "2"
[[plans]]
name = "pro"
period = "fortnight"
anchor_day = 2
  [[plans.allowances]]
  amount = "10.1234567"
  scope = ["missing_meter"]
  [plans.policy]
  kind = "overage"
  overage_limit = "10"
  threshold = "5"
  [[plans.alerts]]
  name = "depleted"
  amount = "1"
  percent = "5"
"#;
    let errors = errors_of(text);
    let listing = CatalogErrors(errors.clone()).to_string();
    let expected = [
        "colour",
        "currency.code",
        "currency.scale",
        "rules.flush_interval",
        "rules.future_max",
        "credit_types[1].name",
        "meters[0].credit_type",
        "meters[0].rounding",
        "meters[0].versions[0].rate",
        "meters[0].versions[1].effective_from",
        "meters[0].versions[1].rate",
        "meters[1].versions[0].time_zone",
        "meters[1].versions[0].tiers[0].rate",
        "meters[1].versions[0].tiers[1].up_to",
        "meters[1].versions[0].dimensions[0].rate",
        "meters[1].versions[0].windows[0].days[1]",
        "meters[1].versions[0].windows[0].to",
        "plans[0].period",
        "plans[0].allowances[0].amount",
        "plans[0].allowances[0].scope[0]",
        "plans[0].policy.overage_price",
        "plans[0].policy.threshold",
        "plans[0].alerts[0].name",
        "plans[0].alerts[0].percent",
        "default_plan",
    ];
    let mut got = keys_of(&errors);
    let mut want = expected.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "all errors:\n{listing}");
    assert_eq!(errors.len(), 25, "{listing}");
    // One line per error, `key: message`.
    assert_eq!(listing.lines().count(), 25);
    assert!(
        listing.contains("rules.flush_interval: must be > 0"),
        "{listing}"
    );
    assert!(
        listing.contains("meters[0].versions[0].rate: a TOML float is inexact"),
        "{listing}"
    );
    assert!(
        listing.contains("unknown time zone \"Mars/Olympus\""),
        "{listing}"
    );
    assert!(
        listing.contains("default_plan: no plan named \"nope\""),
        "{listing}"
    );
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    let text = format!(
        r#"{HEADER}
tagline = "x"
[[meters]]
name = "m"
colour = "red"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  rates = "2"
[[meters.versions.windows]]
name = "w"
days = ["mon"]
from = "00:00"
to = "01:00"
multiplier = "2"
multipler = "3"
[[plans]]
name = "p2"
  [plans.policy]
  kind = "reject"
  treshold = "1"
"#
    );
    let errors = errors_of(&text);
    let mut keys = keys_of(&errors);
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "meters[0].colour",
            "meters[0].versions[0].rates",
            "meters[0].versions[0].windows[0].multipler",
            "plans[0].tagline",
            "plans[1].policy.treshold",
        ],
        "{errors:?}"
    );
    assert!(errors[0]
        .message
        .starts_with("unknown key (expected one of:"));
}

#[test]
fn floats_are_refused_everywhere_integers_and_strings_accepted() {
    let text = format!(
        r#"{HEADER}
  [[plans.allowances]]
  amount = 100.5
  rollover_cap = 10
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = 1e-3
  minimum = 2
"#
    );
    let errors = errors_of(&text);
    assert_eq!(
        keys_of(&errors),
        [
            "meters[0].versions[0].rate",
            "plans[0].allowances[0].amount"
        ]
    );
    for error in &errors {
        assert!(error.message.contains("TOML float is inexact"), "{error}");
    }
    let fixed = text
        .replace("amount = 100.5", "amount = \"100.5\"")
        .replace("rate = 1e-3", "rate = \"0.001\"");
    let catalog = from_str(&fixed).unwrap();
    assert_eq!(catalog.plans[0].allowances[0].rollover_cap, c("10"));
    assert_eq!(catalog.meters[0].versions[0].minimum, Some(d("2")));
}

#[test]
fn amounts_respect_nine_places_and_the_credit_type_scale() {
    let text = format!(
        r#"{HEADER}
  [[plans.allowances]]
  amount = "1.0000001"
  rollover_cap = "1.000000000"
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.0000000001"
  increment = "0"
"#
    );
    let errors = errors_of(&text);
    let listing = CatalogErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            "meters[0].versions[0].increment",
            "meters[0].versions[0].rate",
            "plans[0].allowances[0].amount",
        ]),
        "{listing}"
    );
    assert!(listing.contains("more than 9 decimal places"), "{listing}");
    assert!(listing.contains("credit type's scale (6)"), "{listing}");
    assert!(listing.contains("increment: must be > 0"), "{listing}");
}

#[test]
fn model_specific_keys_and_tier_order() {
    let text = format!(
        r#"{HEADER}
[[meters]]
name = "unit_with_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
[[meters.versions.tiers]]
rate = "1"
[[meters]]
name = "volume_with_rate"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "volume"
  rate = "1"
[[meters.versions.tiers]]
up_to = "10"
rate = "1"
[[meters.versions.tiers]]
rate = "1"
[[meters.versions.windows]]
name = "w"
days = ["sun"]
from = "00:00"
to = "24:00"
rate = "3"
[[meters]]
name = "graduated_bad_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
  dimension_required = true
[[meters.versions.tiers]]
rate = "1"
[[meters.versions.tiers]]
up_to = "5"
rate = "1"
[[meters]]
name = "required_but_empty"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  dimension_required = true
  dimensions = []
[[meters]]
name = "no_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "tiered"
"#
    );
    let errors = errors_of(&text);
    let listing = CatalogErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            "meters[0].versions[0].rate",
            "meters[0].versions[0].tiers",
            "meters[1].versions[0].rate",
            "meters[1].versions[0].windows[0].rate",
            "meters[2].versions[0].tiers[0].up_to",
            "meters[2].versions[0].tiers[1].up_to",
            "meters[2].versions[0].dimension_required",
            "meters[3].versions[0].dimension_required",
            "meters[4].versions[0].model",
        ]),
        "{listing}"
    );
}

#[test]
fn cross_references_are_checked() {
    let text = r#"
default_plan = "payg"
[currency]
code = "EUR"
[[credit_types]]
name = "token"
scale = 0
[[credit_types]]
name = "compute"
scale = 2
[[meters]]
name = "a"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
[[meters]]
name = "b"
credit_type = "compute"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
[[plans]]
name = "payg"
  [[plans.allowances]]
  credit_type = "token"
  amount = "5"
  scope = ["b", "b", "zzz"]
  [[plans.allowances]]
  credit_type = "token"
  amount = "5"
  [[plans.alerts]]
  name = "low"
  amount = "1"
"#;
    let errors = errors_of(text);
    let listing = CatalogErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            // No credit type "credit" exists, so the default does not resolve.
            "meters[0].credit_type",
            "plans[0].allowances[0].scope[0]",
            "plans[0].allowances[0].scope[1]",
            "plans[0].allowances[0].scope[2]",
            "plans[0].allowances[1].credit_type",
            "plans[0].alerts[0].credit_type",
        ]),
        "{listing}"
    );
    assert!(
        listing.contains("(the default): name one with credit_type"),
        "{listing}"
    );
    assert!(
        listing.contains("is priced in \"compute\", not \"token\""),
        "{listing}"
    );
}

#[test]
fn syntax_errors_say_where() {
    let errors = errors_of("default_plan = \"payg\"\n[currency\ncode = \"USD\"\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "");
    assert!(
        errors[0].message.contains("line 2"),
        "{}",
        errors[0].message
    );
    let missing = from_path(Path::new("/nonexistent/catalog.toml")).unwrap_err();
    assert!(
        missing.to_string().starts_with("cannot read catalog"),
        "{missing}"
    );
}

#[test]
fn wrong_types_and_missing_keys_are_named() {
    let text = r#"
default_plan = 3
[currency]
scale = "2"
[[credit_types]]
name = "credit"
[[meters]]
name = "Bad-Name"
versions = "soon"
"#;
    let errors = errors_of(text);
    let listing = CatalogErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            "currency.code",
            "currency.scale",
            "credit_types[0].scale",
            "meters[0].name",
            "meters[0].versions",
            "default_plan",
        ]),
        "{listing}"
    );
    assert!(
        listing.contains("default_plan: expected a string, found an integer"),
        "{listing}"
    );
    assert!(
        listing.contains("currency.code: missing required key"),
        "{listing}"
    );
}

fn policy_errors(catalog: &Catalog, json: &str) -> Vec<String> {
    let spec: PolicySpec = serde_json::from_str(json).expect("valid PolicySpec JSON");
    match compile_policy(catalog, &spec, "policy") {
        Ok(policy) => panic!("expected errors, compiled {policy:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn policies_compile_the_same_from_json() {
    let catalog = shipped();
    let spec: PolicySpec = serde_json::from_str(
        r#"{"kind":"auto_topup","credit_type":"compute_credit","threshold":"10","target":50,
            "price":"0.02","max_per_period":2,"cooldown":"30m","fallback":"overage",
            "overage_limit":"5","overage_price":"0.03"}"#,
    )
    .unwrap();
    let Policy::AutoTopup(rule) = compile_policy(&catalog, &spec, "policy").unwrap() else {
        panic!("auto_topup")
    };
    assert_eq!(
        rule.credit_type,
        catalog.credit_type_id("compute_credit").unwrap()
    );
    assert_eq!(rule.amount, TopupAmount::Target(c("50")));
    assert_eq!(rule.cooldown, Span(30 * 60_000));
    assert_eq!(
        rule.fallback,
        Fallback::Overage(Overage {
            limit: c("5"),
            price: c("0.03")
        })
    );
    let spec = PolicySpec {
        kind: "reject".into(),
        ..PolicySpec::default()
    };
    assert_eq!(
        compile_policy(&catalog, &spec, "policy"),
        Ok(Policy::Reject)
    );
}

#[test]
fn policy_compile_errors() {
    let catalog = shipped();
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"kind":"refund"}"#,
            &["policy.kind: unknown policy kind \"refund\""],
        ),
        (
            r#"{"kind":"reject","threshold":"1","overage_limit":"2"}"#,
            &[
                "policy.threshold: not a key of a policy of kind \"reject\"",
                "policy.overage_limit: not a key of a policy of kind \"reject\"",
            ],
        ),
        (
            r#"{"kind":"overage","overage_limit":"-1"}"#,
            &[
                "policy.overage_limit: must be >= 0",
                "policy.overage_price: missing required key",
            ],
        ),
        (
            r#"{"kind":"auto_topup","credit_type":"gold","threshold":"1","amount":"5",
                "target":"9","price":"0.01","max_per_period":0,"overage_limit":"3"}"#,
            &[
                "policy.overage_limit: only with fallback = \"overage\"",
                "policy.credit_type: unknown credit type \"gold\"",
                "policy.target: give exactly one of amount and target, not both",
                "policy.max_per_period: must be >= 1",
            ],
        ),
        (
            r#"{"kind":"auto_topup","credit_type":"compute_credit","threshold":"0.00001",
                "target":"0","max_per_period":1,"fallback":"overage"}"#,
            &[
                "policy.threshold: has more decimal places than its credit type's scale (4)",
                "policy.target: must be > 0",
                "policy.price: missing required key",
                "policy.overage_limit: missing required key",
                "policy.overage_price: missing required key",
            ],
        ),
        (
            r#"{"kind":"auto_topup","threshold":"100","target":"100","price":"1",
                "max_per_period":1,"fallback":"maybe"}"#,
            &[
                "policy.target: must be above threshold",
                "policy.fallback: unknown fallback \"maybe\"",
            ],
        ),
    ];
    for (json, expected) in cases {
        let got = policy_errors(&catalog, json);
        assert_eq!(got.len(), expected.len(), "{json}: {got:#?}");
        for (got, want) in got.iter().zip(expected.iter()) {
            assert!(got.starts_with(want), "{json}:\n got  {got}\n want {want}");
        }
    }
}

#[test]
fn plan_policy_errors_carry_the_plan_path() {
    let text = format!(
        r#"{HEADER}
  [plans.policy]
  kind = "auto_topup"
  threshold = 1.5
  amount = "10"
  price = "0.01"
  max_per_period = 2
  cooldown = "soon"
"#
    );
    let errors = errors_of(&text);
    // The float is reported once, as a float, not again as "missing".
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            "plans[0].policy.cooldown",
            "plans[0].policy.threshold"
        ]),
        "{errors:?}"
    );
}

#[test]
fn windows_and_periods_are_validated() {
    let text = format!(
        r#"{HEADER}
period = "week"
anchor_day = 3
anchor_weekday = "funday"
expiring_lead = "0"
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01"
  model = "unit"
  rate = "1"
[[meters.versions.windows]]
name = "a"
days = []
from = "9:00"
to = "24:01"
[[meters.versions.windows]]
name = "a"
days = ["sat"]
from = "00:00"
to = "24:00"
multiplier = "-1"
"#
    );
    let errors = errors_of(&text);
    let listing = CatalogErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        sorted(vec![
            "meters[0].versions[0].effective_from",
            "meters[0].versions[0].windows[0].days",
            "meters[0].versions[0].windows[0].from",
            "meters[0].versions[0].windows[0].to",
            "meters[0].versions[0].windows[0]",
            "meters[0].versions[0].windows[1].multiplier",
            "plans[0].anchor_weekday",
            "plans[0].anchor_day",
            "plans[0].expiring_lead",
        ]),
        "{listing}"
    );
}

#[test]
fn fingerprints_are_stable_and_follow_prices() {
    let text = std::fs::read_to_string(shipped_path()).unwrap();
    let clock = at_time("2026-12-01T00:00:00Z");
    let a = from_str(&text).unwrap().fingerprints_in_force(clock);
    let b = from_str(&text).unwrap().fingerprints_in_force(clock);
    assert_eq!(a, b);
    assert_eq!(a.len(), 6, "every version in force at the clock: {a:?}");
    // The spelling of a number and comments do not matter; the value does.
    let respelled = text.replace("rate = \"0.0015\"", "rate = \"0.00150\" # same price");
    assert_eq!(
        from_str(&respelled).unwrap().fingerprints_in_force(clock),
        a
    );
    let changed = text.replace("rate = \"0.0015\"", "rate = \"0.0016\"");
    let c = from_str(&changed).unwrap().fingerprints_in_force(clock);
    let differing: Vec<_> = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x)
        .collect();
    assert_eq!(differing.len(), 1);
    assert_eq!(differing[0].meter, "api_call");
    assert_eq!(differing[0].effective_from, at_time("2026-07-01T00:00:00Z"));
    // Rounding and the credit type's scale decide prices too.
    let rounding = text.replace("rounding = \"up\"", "rounding = \"down\"");
    assert_ne!(from_str(&rounding).unwrap().fingerprints_in_force(clock), a);
    let scale = text
        .replace("scale = 4", "scale = 3")
        .replace("\"500.5\"", "\"500\"");
    assert_ne!(from_str(&scale).unwrap().fingerprints_in_force(clock), a);
    // Before July only the first api_call version is in force.
    let early = from_str(&text)
        .unwrap()
        .fingerprints_in_force(at_time("2026-06-30T23:59:59.999Z"));
    assert_eq!(early.len(), 5);
}

#[test]
fn check_history_refuses_rewritten_history_and_accepts_the_future() {
    let text = std::fs::read_to_string(shipped_path()).unwrap();
    let clock = at_time("2026-03-01T00:00:00Z");
    let recorded = from_str(&text).unwrap().fingerprints_in_force(clock);
    assert_eq!(from_str(&text).unwrap().check_history(&recorded), Ok(()));

    // The July api_call price was not yet in force: changing it is fine.
    let future_change = text.replace("rate = \"0.0015\"", "rate = \"0.0016\"");
    assert_eq!(
        from_str(&future_change).unwrap().check_history(&recorded),
        Ok(())
    );

    // A new version after the snapshot's clock is the future: accepted.
    let added = format!(
        "{text}\n[[meters.versions]]\neffective_from = \"2027-01-01T00:00:00Z\"\nmodel = \"unit\"\nrate = \"0.6\"\n"
    );
    let added = from_str(&added).unwrap();
    assert_eq!(
        added.meters[4].versions.len(),
        2,
        "the version went to `export`"
    );
    assert_eq!(added.check_history(&recorded), Ok(()));
    assert_eq!(added.check_history_at(&recorded, clock), Ok(()));

    // Changing a price in force is refused, naming the meter.
    let changed = text.replace("rate = \"0.002\"", "rate = \"0.003\"");
    let problems = from_str(&changed)
        .unwrap()
        .check_history(&recorded)
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("\"api_call\"") && problems[0].contains("changed"),
        "{problems:?}"
    );

    // Removing a meter whose price was in force is refused.
    let start = text.find("[[meters]]\nname = \"export\"").unwrap();
    let end = text.find("# Plans:").unwrap();
    let removed = format!("{}{}", &text[..start], &text[end..]);
    let problems = from_str(&removed)
        .unwrap()
        .check_history(&recorded)
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("\"export\": no longer in the catalog"),
        "{problems:?}"
    );

    // Moving a version's start is a missing version plus an inserted one.
    let moved = text.replacen("2026-01-01T00:00:00Z", "2025-12-01T00:00:00Z", 1);
    let problems = from_str(&moved)
        .unwrap()
        .check_history(&recorded)
        .unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("is missing"), "{problems:?}");
    assert!(problems[1].contains("was added"), "{problems:?}");

    // A version added between the last recorded one and the clock: only the clock knows.
    let sneaked = format!(
        "{text}\n[[meters.versions]]\neffective_from = \"2026-02-01T00:00:00Z\"\nmodel = \"unit\"\nrate = \"0.6\"\n"
    );
    let sneaked = from_str(&sneaked).unwrap();
    assert_eq!(sneaked.check_history(&recorded), Ok(()));
    let problems = sneaked.check_history_at(&recorded, clock).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("\"export\"") && problems[0].contains("2026-02-01"),
        "{problems:?}"
    );
}

#[test]
fn names_times_and_days_parse_strictly() {
    assert!(valid_name("gpu_second_2"));
    for bad in ["", "GPU", "a-b", "a b", "é", &"a".repeat(65)] {
        assert!(!valid_name(bad), "{bad:?}");
    }
    assert_eq!(parse_time_of_day("00:00", false), Some(0));
    assert_eq!(parse_time_of_day("23:59", false), Some(86_340_000));
    assert_eq!(parse_time_of_day("24:00", true), Some(DAY_MS));
    for bad in ["24:00", "9:00", "12:60", "25:00", "12-00", "12:00:00"] {
        assert_eq!(parse_time_of_day(bad, false), None, "{bad:?}");
    }
    assert_eq!(parse_time_of_day("24:01", true), None);
    assert_eq!(weekday_index("sun"), Some(6));
    assert_eq!(weekday_index("Sun"), None);
}

#[test]
fn check_settings_names_every_changed_setting_and_accepts_additions() {
    let text = std::fs::read_to_string(shipped_path()).unwrap();
    let catalog = from_str(&text).unwrap();
    let (recorded, order) = (catalog.setting_fingerprints(), catalog.order());
    assert_eq!(catalog.check_settings(&recorded, &order), Ok(()));
    // Spelling is not a change: the same value written otherwise.
    let respelled = text.replace("flush_interval = \"1h\"", "flush_interval = \"60m\"");
    assert_eq!(
        from_str(&respelled)
            .unwrap()
            .check_settings(&recorded, &order),
        Ok(())
    );
    let changed = text
        .replace("flush_interval = \"1h\"", "flush_interval = \"1m\"")
        .replacen("price = \"19\"", "price = \"29\"", 1)
        .replacen("name = \"team_weekly\"", "name = \"__t__\"", 1)
        .replacen("name = \"daily_test\"", "name = \"team_weekly\"", 1)
        .replacen("name = \"__t__\"", "name = \"daily_test\"", 1);
    let problems = from_str(&changed)
        .unwrap()
        .check_settings(&recorded, &order)
        .unwrap_err();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert!(keys.contains(&"rules.flush_interval"), "{problems:?}");
    assert!(keys.contains(&"plans.starter.price"), "{problems:?}");
    assert!(keys.contains(&"plans (order)"), "{problems:?}");
    // A plan appended is the future.
    let added = format!(
        "{text}\n[[plans]]\nname = \"later\"\nperiod = \"month\"\n  [plans.policy]\n  kind = \"reject\"\n"
    );
    assert_eq!(
        from_str(&added).unwrap().check_settings(&recorded, &order),
        Ok(())
    );
}
