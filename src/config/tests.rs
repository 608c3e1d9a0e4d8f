use super::*;
use toml::{Table, Value};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn with_file(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    from_parts(Some((Path::new("test.toml"), text)), &env(vars))
}

fn errors_of(text: &str, vars: &[(&str, &str)]) -> Vec<ConfigError> {
    match with_file(text, vars) {
        Ok(config) => panic!("expected errors, loaded {config:#?}"),
        Err(errors) => errors.0,
    }
}

fn keys_of(errors: &[ConfigError]) -> Vec<&str> {
    errors.iter().map(|error| error.key.as_str()).collect()
}

#[test]
fn defaults_load_with_the_documented_values() {
    let config = Config::defaults().expect("the defaults load");
    assert_eq!(config.nats.urls, vec!["nats://127.0.0.1:4222".to_string()]);
    assert_eq!(config.nats.auth, NatsAuth::None);
    assert_eq!(config.nats.connect_timeout, Duration::from_secs(5));
    assert_eq!(config.input.stream, "CREDITFLOW_IN");
    assert_eq!(
        config
            .input
            .subject(7, crate::wire::subject::SubjectKind::Usage),
        "creditflow.in.7.usage"
    );
    assert_eq!(config.input.subject_filter(), "creditflow.in.*.*");
    assert_eq!(config.output.subject(7, "alert"), "creditflow.out.7.alert");
    assert_eq!(config.input.storage, Storage::File);
    assert_eq!(config.input.discard, Discard::New);
    assert_eq!(config.input.max_age, Duration::from_secs(35 * 86_400));
    assert_eq!(config.input.max_bytes, 10 << 30);
    assert_eq!(config.input.fetch_bytes_max, 8 << 20);
    assert_eq!(config.input.max_msgs, 1_000_000_000);
    assert_eq!(config.output.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(config.output.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.engine.partitions, 16);
    assert_eq!(config.engine.shards, 0);
    assert_eq!(config.engine.tick_interval, Some(Duration::from_secs(1)));
    assert!(!config.engine.huge_pages, "opted out by default");
    assert_eq!(config.snapshot.keep, 3);
    assert_eq!(config.snapshot.failures_unready, 3);
    assert_eq!(config.snapshot.deltas_max, 32);
    assert_eq!(config.snapshot.fold_percent, 100);
    assert_eq!(config.lease.bucket, "creditflow_leases");
    assert_eq!(config.lease.ttl, Duration::from_secs(15));
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("address"))
    );
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert!(config.service.enabled);
    assert_eq!(config.service.subject_prefix, "creditflow.svc");
    assert_eq!(config.service.queue_group, "q");
    assert_eq!(config.service.wait_max, Duration::from_secs(5));
    assert_eq!(config.service.statement_entries_max, 16_384);
}

#[test]
fn the_shipped_file_loads_and_equals_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/creditflow.toml");
    let loaded = load(Some(&path), &[]).expect("config/creditflow.toml loads");
    assert_eq!(loaded, Config::defaults().expect("defaults"));
}

#[test]
fn the_environment_wins_over_the_file_which_wins_over_the_defaults() {
    let file = "[engine]\nshards = 4\npartitions = 8\n[nats]\nname = \"from-file\"\n";
    let config = with_file(file, &[]).expect("loads");
    assert_eq!((config.engine.shards, config.engine.partitions), (4, 8));
    assert_eq!(config.nats.name, "from-file");
    assert_eq!(
        config.engine.batch_size_max, 1024,
        "untouched keys keep defaults"
    );

    let vars = [
        ("CREDITFLOW_ENGINE_SHARDS", "2"),
        ("CREDITFLOW_NATS_URLS", "nats://a:4222, nats://b:4222"),
        ("CREDITFLOW_INPUT_ALLOW_DISCARD_OLD", "true"),
        ("CREDITFLOW_INPUT_MAX_BYTES", "1GiB"),
        ("HOME", "/root"),
    ];
    let config = with_file(file, &vars).expect("loads");
    assert_eq!(config.engine.shards, 2, "the environment wins");
    assert_eq!(config.engine.partitions, 8, "the file still applies");
    assert_eq!(config.nats.urls, vec!["nats://a:4222", "nats://b:4222"]);
    assert!(config.input.allow_discard_old);
    assert_eq!(config.input.max_bytes, 1 << 30);

    let config = load(None, &env(&[("CREDITFLOW_NATS_URL", "nats://h:4222")])).expect("loads");
    assert_eq!(config.nats.urls, vec!["nats://h:4222"]);
}

#[test]
fn unknown_keys_sections_and_variables_are_rejected() {
    let errors = errors_of(
        "colour = 3\n[nats]\nurl = \"nats://x\"\n[engine]\nshard = 2\n[metrics]\nlisten = \"\"\n",
        &[
            ("CREDITFLOW_ENGINE_SHARD", "2"),
            ("CREDITFLOW_BOGUS", "1"),
            ("CREDITFLOW_nats_urls", "nats://x"),
            ("OTHER_ENGINE_SHARDS", "2"),
        ],
    );
    let listing = ConfigErrors(errors.clone()).to_string();
    let mut keys = keys_of(&errors);
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "CREDITFLOW_BOGUS",
            "CREDITFLOW_ENGINE_SHARD",
            "CREDITFLOW_nats_urls",
            "colour",
            "engine.shard",
            "nats.url",
        ],
        "{listing}"
    );
    assert!(
        listing.contains("nats.url: unknown key (keys of [nats]: "),
        "{listing}"
    );
}

#[test]
fn many_mistakes_are_reported_together_each_with_its_key() {
    let file = r#"
[nats]
urls = []
token = "t"
creds_file = "/nonexistent/creditflow.creds"
tls_cert_file = "/nonexistent/cert.pem"
connect_timeout = 5
[input]
stream = "IN.PUT"
subject_prefix = "creditflow.*"
replicas = 7
storage = "memory"
max_age = "0"
max_bytes = "12 parsecs"
discard = "old"
fetch_batch_max = 0
[output]
stream = "IN.PUT"
subject_prefix = "creditflow"
duplicate_window = "60d"
[engine]
partitions = 4
shards = 9
tick_interval = "soon"
huge_pages = "yes"
[snapshot]
keep = 1
[metrics]
listen = "localhost"
[log]
format = "xml"
"#;
    let errors = errors_of(file, &[("CREDITFLOW_ENGINE_BATCH_SIZE_MAX", "lots")]);
    let listing = ConfigErrors(errors.clone()).to_string();
    let expected = [
        "engine.batch_size_max",
        "nats.urls",
        "nats",
        "nats.tls_key_file",
        "nats.tls_cert_file",
        "nats.creds_file",
        "nats.connect_timeout",
        "input.stream",
        "input.subject_prefix",
        "input.replicas",
        "input.max_age",
        "input.max_bytes",
        "input.fetch_batch_max",
        "output.stream",
        "output.duplicate_window",
        "engine.tick_interval",
        "engine.huge_pages",
        "snapshot.keep",
        "metrics.listen",
        "log.format",
        "input.storage",
        "input.discard",
        "engine.shards",
        // The service's default prefix, creditflow.svc, is under the output's creditflow.
        "service.subject_prefix",
    ];
    let mut got = keys_of(&errors);
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{listing}");
    assert_eq!(errors.len(), 24, "{listing}");
    for line in [
        "engine.batch_size_max: expected an integer, found \"lots\" (from \
         CREDITFLOW_ENGINE_BATCH_SIZE_MAX)",
        "nats.urls: must name at least one server",
        "nats: more than one auth method is set (token, creds_file): set at most one",
        "nats.connect_timeout: expected a duration string such as \"5s\", found an integer",
        "input.replicas: must be between 1 and 5, found 7",
        "input.max_age: must be > 0",
        "engine.shards: 9 is more than the 4 partitions",
        "snapshot.keep: must be >= 2, found 1",
        "log.format: unknown value \"xml\" (text or json)",
    ] {
        assert!(listing.contains(line), "missing {line:?} in\n{listing}");
    }
    // The output prefix overlaps the input's, but the input's is invalid: reported once.
    assert!(!listing.contains("overlaps the input's"), "{listing}");
    assert!(
        listing.contains("service.subject_prefix: \"creditflow.svc\" overlaps output.subject_prefix \"creditflow\""),
        "{listing}"
    );
    assert_eq!(listing.lines().count(), errors.len(), "one error per line");
}

#[test]
fn cross_field_rules() {
    let cases: &[(&str, &str)] = &[
        (
            "[output]\nsubject_prefix = \"creditflow.in.x\"\n",
            "output.subject_prefix: \"creditflow.in.x\" overlaps the input's",
        ),
        (
            "[output]\nstream = \"CREDITFLOW_IN\"\n",
            "output.stream: \"CREDITFLOW_IN\" is also the input stream's name",
        ),
        (
            "[nats]\nuser = \"u\"\n",
            "nats.password: must be set when user is",
        ),
        (
            "[nats]\ntls_key_file = \"Cargo.toml\"\n",
            "nats.tls_cert_file: must be set when tls_key_file is",
        ),
        (
            "[output]\nstorage = \"memory\"\n",
            "output.storage: memory storage loses every message",
        ),
        (
            "[input]\nduplicate_window = \"36d\"\n",
            "input.duplicate_window: 36d is longer than max_age (35d)",
        ),
        (
            "[engine]\ncatalog = \"no/such/catalog.toml\"\n",
            "engine.catalog: file not found: no/such/catalog.toml",
        ),
        (
            "[snapshot]\ndir = \"Cargo.toml\"\n",
            "snapshot.dir: Cargo.toml exists and is not a directory",
        ),
        (
            "[nats]\nurls = [\"http://x:1\"]\n",
            "nats.urls: \"http://x:1\": unknown scheme \"http\"",
        ),
        (
            "[service]\nsubject_prefix = \"creditflow.in.svc\"\n",
            "service.subject_prefix: \"creditflow.in.svc\" overlaps input.subject_prefix",
        ),
        (
            "[service]\nqueue_group = \"a b\"\n",
            "service.queue_group: \"a b\" is not a queue group name",
        ),
        (
            "[lease]\nttl = \"500ms\"\n",
            "lease.ttl: 500ms is shorter than 1s",
        ),
        (
            "[lease]\nbucket = \"a.b\"\n",
            "lease.bucket: \"a.b\" is not a valid name",
        ),
        (
            "[input]\nreplicas = 3\n",
            "lease.ttl: 15s is shorter than 20s, the least with input.replicas = 3",
        ),
        (
            "[cluster]\nenabled = true\n",
            "cluster.enabled: processors sharing the partitions need snapshot.object_store",
        ),
        (
            "[service]\nwait_max = \"0\"\n",
            "service.wait_max: must be > 0",
        ),
    ];
    for (file, want) in cases {
        let errors = errors_of(file, &[]);
        let listing = ConfigErrors(errors.clone()).to_string();
        assert_eq!(errors.len(), 1, "{file}\n{listing}");
        assert!(
            listing.starts_with(want),
            "{file}\n got  {listing}\n want {want}"
        );
    }
    // The consents make the same settings valid.
    let config = with_file(
        "[input]\nstorage = \"memory\"\nallow_memory_storage = true\ndiscard = \"old\"\n\
         allow_discard_old = true\n[engine]\ntick_interval = \"0\"\n[metrics]\nlisten = \"\"\n",
        &[],
    )
    .expect("loads");
    assert_eq!(config.input.storage, Storage::Memory);
    assert_eq!(config.input.discard, Discard::Old);
    assert_eq!(config.engine.tick_interval, None);
    assert_eq!(config.metrics.listen, None);
    // Files that exist are accepted, and the auth method is typed.
    let config = with_file(
        "[nats]\ncreds_file = \"Cargo.toml\"\ntls_cert_file = \"Cargo.toml\"\n\
         tls_key_file = \"Cargo.toml\"\n",
        &[],
    )
    .expect("loads");
    assert_eq!(config.nats.auth, NatsAuth::CredsFile("Cargo.toml".into()));
    // Both ways of naming the servers at once is ambiguous.
    let errors = errors_of(
        "",
        &[
            ("CREDITFLOW_NATS_URL", "nats://a:1"),
            ("CREDITFLOW_NATS_URLS", "nats://b:1"),
        ],
    );
    assert_eq!(keys_of(&errors), vec!["CREDITFLOW_NATS_URL"]);
}

#[test]
fn shard_count_resolves_zero_and_never_exceeds_partitions() {
    let mut config = Config::defaults().expect("defaults");
    config.engine.shards = 3;
    assert_eq!(config.shard_count(), 3);
    config.engine.shards = 0;
    config.engine.partitions = 1;
    assert_eq!(config.shard_count(), 1);
    config.engine.partitions = 4096;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(config.shard_count(), cores.min(4096));
}

#[test]
fn sizes_parse_and_print() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1024"), Ok(1024));
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("100GiB"), Ok(100 << 30));
    assert_eq!(parse_size("5 GB"), Ok(5_000_000_000));
    assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    assert_eq!(parse_size("7B"), Ok(7));
    assert_eq!(parse_size("3KB"), Ok(3000));
    for bad in [
        "",
        "MiB",
        "1.5GiB",
        "-1",
        "10mb",
        "10 MiBs",
        "99999999999TiB",
    ] {
        assert_eq!(parse_size(bad), Err(SizeParseError), "{bad:?}");
    }
    assert_eq!(format_size(8 << 20), "8MiB");
    assert_eq!(format_size(1000), "1000");
    assert_eq!(format_size(1536), "1536");
    assert_eq!(format_size(3 << 40), "3TiB");
    let config = with_file("[input]\nfetch_bytes_max = 65536\n", &[]).expect("loads");
    assert_eq!(config.input.fetch_bytes_max, 65536);
    let errors = errors_of("[input]\nfetch_bytes_max = 0\nmax_bytes = -5\n", &[]);
    assert_eq!(
        keys_of(&errors),
        vec!["input.max_bytes", "input.fetch_bytes_max"]
    );
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    for bad in ["", "5", "1.5s", "-1s", "5 s", "10y"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    for (text, millis) in [("0", 0), ("250ms", 250), ("90s", 90_000), ("2m", 120_000)] {
        assert_eq!(format_duration(Duration::from_millis(millis)), text);
    }
    assert_eq!(format_duration(Duration::from_secs(86_400 * 30)), "30d");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    let errors = errors_of("[nats]\nrequest_timeout = \"6000w\"\n", &[]);
    assert!(
        errors[0].message.contains("longer than the limit"),
        "{errors:?}"
    );
}

#[test]
fn effective_config_prints_every_key_and_loads_back() {
    let vars = [
        ("CREDITFLOW_ENGINE_PARTITIONS", "32"),
        ("CREDITFLOW_INPUT_FETCH_BYTES_MAX", "1000"),
        ("CREDITFLOW_NATS_URLS", "tls://a:4222,nats://b:4222"),
        ("CREDITFLOW_NATS_TLS_REQUIRED", "true"),
    ];
    let config = load(None, &env(&vars)).expect("loads");
    let text = config.to_toml();
    let again = with_file(&text, &[]).expect("the printed config loads");
    assert_eq!(again, config);
    // Every key of the documented file is printed.
    let defaults: Table = DEFAULTS_TOML.parse().expect("toml");
    let printed: Table = text.parse().expect("toml");
    for (section, keys) in &defaults {
        let (Value::Table(keys), Some(Value::Table(got))) = (keys, printed.get(section)) else {
            panic!("section {section} missing from\n{text}");
        };
        for key in keys.keys() {
            assert!(
                got.contains_key(key),
                "{section}.{key} missing from\n{text}"
            );
        }
    }
}

#[test]
fn credentials_in_a_url_are_refused_and_never_printed() {
    let errors = errors_of("[nats]\nurls = [\"nats://alice:s3cret@host:4222\"]\n", &[]);
    let listing = ConfigErrors(errors).to_string();
    assert!(listing.contains("nats.urls"), "{listing}");
    assert!(listing.contains("carries credentials"), "{listing}");
    assert!(
        !listing.contains("s3cret") && !listing.contains("alice"),
        "{listing}"
    );
    let errors = errors_of("[nats]\nurls = [\"http://bob:pw@host\"]\n", &[]);
    assert!(!ConfigErrors(errors).to_string().contains("pw"));
}

#[test]
fn server_urls_are_parsed_at_load_with_every_error_listed() {
    // Each passed the old checks (scheme, no credentials, a host) and failed only at connect.
    let errors = errors_of(
        "[nats]\nurls = [\"nats://host:notaport\", \"nats://[::1\", \"host:99999\", \
         \"nats://ok:4222\"]\n[engine]\npartitions = 0\n",
        &[],
    );
    let listing = ConfigErrors(errors.clone()).to_string();
    assert_eq!(
        keys_of(&errors),
        vec!["nats.urls", "nats.urls", "nats.urls", "engine.partitions"],
        "{listing}"
    );
    for (error, url) in errors
        .iter()
        .zip(["nats://host:notaport", "nats://[::1", "host:99999"])
    {
        assert!(
            error
                .message
                .starts_with(&format!("{url:?} is not a valid server URL")),
            "{listing}"
        );
    }
    // What the client accepts loads: host only, host:port, IPv6, every scheme.
    let config = with_file(
        "[nats]\nurls = [\"h\", \"h:4222\", \"nats://[::1]:4222\", \"tls://h\", \"ws://h:80\", \
         \"wss://h\"]\n",
        &[],
    )
    .expect("loads");
    assert_eq!(config.nats.urls.len(), 6);
}

#[test]
fn secrets_are_never_printed() {
    let config = load(
        None,
        &env(&[
            ("CREDITFLOW_NATS_USER", "svc"),
            ("CREDITFLOW_NATS_PASSWORD", "hunter2"),
        ]),
    )
    .expect("loads");
    assert_eq!(
        config.nats.auth,
        NatsAuth::UserPassword {
            user: "svc".into(),
            password: "hunter2".into()
        }
    );
    assert!(!config.to_toml().contains("hunter2"));
    assert!(config.to_toml().contains("user = \"svc\""));
    assert!(!format!("{config:?}").contains("hunter2"));
    let config = load(None, &env(&[("CREDITFLOW_NATS_TOKEN", "s3cret")])).expect("loads");
    assert!(!config.to_toml().contains("s3cret"));
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn syntax_errors_and_unreadable_files_say_where() {
    let errors = errors_of("[nats]\nname = \n", &[]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .starts_with("test.toml: TOML syntax error at line 2"),
        "{errors:?}"
    );
    let missing = load(Some(Path::new("/nonexistent/creditflow.toml")), &[]).unwrap_err();
    assert!(missing
        .to_string()
        .starts_with("cannot read config /nonexistent/creditflow.toml"));
    // A syntax error in the file does not hide the environment's errors.
    let errors = errors_of("[nats\n", &[("CREDITFLOW_NOPE", "1")]);
    assert_eq!(keys_of(&errors), vec!["", "CREDITFLOW_NOPE"]);
}

#[test]
fn the_catalog_check_needs_retention_that_covers_backdating() {
    let catalog = crate::catalog::load::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml"),
    )
    .expect("the shipped catalog loads");
    let mut config = Config::defaults().expect("defaults");
    assert_eq!(config.check_catalog(&catalog), Ok(()));
    config.input.max_age = Duration::from_secs(86_400);
    let errors = config.check_catalog(&catalog).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "input.max_age: 1d is shorter than the catalog's rules.backdate_max (35d): make it \
         at least that"
    );
}
