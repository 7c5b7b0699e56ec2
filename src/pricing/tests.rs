#![allow(clippy::unwrap_used)]

use super::*;

/// A table of hand-picked entries (as a config layer) over an empty built-in layer, so the
/// figures below do not move when the built-in prices do.
fn table(text: &str) -> RateTable {
    RateTable::new(parse_price_file(text, Layer::Config).unwrap())
}

const TABLE: &str = r#"
[[price]]
provider = "openai"
model = "gpt-4o*"
effective = "2024-05-13"
input = 5.0
output = 15.0

[[price]]
provider = "openai"
model = "gpt-4o*"
effective = 2024-10-02
input = 2.50
output = 10.00
cache_read = 1.25

[[price]]
provider = "openai"
model = "gpt-4o-mini*"
effective = "2024-07-18"
input = 0.15
output = 0.60
cache_read = 0.075

[[price]]
provider = "anthropic"
model = "claude-sonnet-4-5*"
effective = "2025-09-29"
input = 3.0
output = 15.0
cache_read = 0.30
cache_write = 3.75
cache_write_1h = 6.0
per_web_search = 0.01
source = "https://www.anthropic.com/pricing"
[[price.tier]]
above_prompt_tokens = 200000
input = 6.0
output = 22.5
cache_read = 0.60
cache_write = 7.5
cache_write_1h = 12.0

[[price]]
provider = "gemini"
model = "gemini-2.5-pro"
effective = "2025-06-17"
input = 1.25
output = 10.0
[[price.tier]]
above_prompt_tokens = 200000
input = 2.50
output = 15.0

[[price]]
provider = "mistral"
model = "mistral-large"
effective = "2024-11-18"
input = 2.0
output = 6.0

[[price]]
provider = "deepseek"
model = "deepseek-chat"
effective = "2025-09-05"
input = 0.56
output = 1.68
cache_read = 0.07

[[price]]
provider = "xai"
model = "grok-3-mini*"
effective = "2025-04-01"
input = 0.30
output = 0.50
cache_read = 0.075

[[price]]
provider = "*"
model = "llama-3.3-70b*"
effective = "2024-12-06"
input = 0.59
output = 0.79

[[price]]
provider = "openai"
model = "dall-e-3"
effective = "2023-11-06"
per_image = { "1024x1024:standard" = 0.04, "1024x1024:hd" = 0.08, "1024x1792" = 0.08 }

[[price]]
provider = "openai"
model = "whisper-1"
effective = "2023-03-01"
per_audio_second = 0.0001
"#;

fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

fn usage(input: u64, cache_read: u64, cache_write: u64, write_1h: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        cache_write_1h_tokens: write_1h,
        output_tokens: output,
        reasoning_tokens: 0,
    }
}

fn provider(flavor: Flavor) -> ProviderPricing {
    ProviderPricing {
        flavor,
        markup: 0.0,
        local: false,
    }
}

/// Prices a call and returns (cost in nano-dollars, price id).
fn check(
    provider_name: &str,
    flavor: Flavor,
    model: &str,
    on: &str,
    usage: Usage,
    quantities: Quantities,
) -> (Option<i64>, Option<String>) {
    let priced = price_call(
        &table(TABLE),
        provider_name,
        provider(flavor),
        Some(model),
        date(on),
        Some(&usage),
        &quantities,
        None,
    );
    (priced.cost_nanos, priced.price_id)
}

#[test]
fn every_bucket_of_every_provider_against_hand_computed_figures() {
    let q = Quantities::default;
    let cases: Vec<(&str, Flavor, &str, &str, Usage, Quantities, i64)> = vec![
        // 1000 × 2.50 + 2000 × 1.25 + 500 × 10.00 per 1M = $0.0025 + $0.0025 + $0.005.
        (
            "openai",
            Flavor::OpenAi,
            "gpt-4o-2024-08-06",
            "2024-11-15",
            usage(1000, 2000, 0, 0, 500),
            q(),
            10_000_000,
        ),
        // Before the price cut: $5 / $15, cache read at OpenAI's documented half of input.
        (
            "openai",
            Flavor::OpenAi,
            "gpt-4o-2024-05-13",
            "2024-09-01",
            usage(1000, 2000, 0, 0, 500),
            q(),
            17_500_000,
        ),
        // The more specific glob wins: gpt-4o-mini, not gpt-4o.
        (
            "openai",
            Flavor::OpenAi,
            "gpt-4o-mini-2024-07-18",
            "2025-01-01",
            usage(1_000_000, 0, 0, 0, 0),
            q(),
            150_000_000,
        ),
        // Anthropic: input 100 × 3, read 10k × 0.30, 5-minute writes 1500 × 3.75, 1-hour writes
        // 500 × 6, output 1000 × 15 (reasoning inside), 2 web searches × $0.01.
        (
            "anthropic",
            Flavor::Anthropic,
            "claude-sonnet-4-5-20250929",
            "2025-10-01",
            Usage {
                reasoning_tokens: 400,
                ..usage(100, 10_000, 2000, 500, 1000)
            },
            Quantities {
                web_search_calls: 2,
                ..Quantities::default()
            },
            46_925_000,
        ),
        // Above 200k prompt tokens (input + cache): the tier's prices for every bucket.
        (
            "anthropic",
            Flavor::Anthropic,
            "claude-sonnet-4-5",
            "2025-10-01",
            usage(150_000, 60_000, 0, 0, 1000),
            q(),
            958_500_000,
        ),
        // Gemini 2.5 Pro at exactly 200k is not above it; one token more is.
        (
            "gemini",
            Flavor::Gemini,
            "models/gemini-2.5-pro",
            "2025-07-01",
            usage(200_000, 0, 0, 0, 1000),
            q(),
            260_000_000,
        ),
        (
            "gemini",
            Flavor::Gemini,
            "gemini-2.5-pro",
            "2025-07-01",
            usage(200_001, 0, 0, 0, 1000),
            q(),
            515_002_500,
        ),
        // Dated and -latest ids fall back to the model's entry.
        (
            "mistral",
            Flavor::Mistral,
            "mistral-large-2411",
            "2025-01-01",
            usage(1000, 0, 0, 0, 1000),
            q(),
            8_000_000,
        ),
        (
            "mistral",
            Flavor::Mistral,
            "mistral-large-latest",
            "2025-01-01",
            usage(1000, 0, 0, 0, 1000),
            q(),
            8_000_000,
        ),
        // DeepSeek: cache hits at their own price.
        (
            "deepseek",
            Flavor::DeepSeek,
            "deepseek-chat",
            "2025-10-01",
            usage(1000, 1000, 0, 0, 1000),
            q(),
            2_310_000,
        ),
        // xAI: reasoning is inside output and priced once.
        (
            "xai",
            Flavor::Xai,
            "grok-3-mini-high",
            "2025-06-01",
            Usage {
                reasoning_tokens: 300,
                ..usage(1000, 0, 0, 0, 400)
            },
            q(),
            500_000,
        ),
        // A `*` provider entry prices the model wherever it runs.
        (
            "groq",
            Flavor::Groq,
            "llama-3.3-70b-versatile",
            "2025-06-01",
            usage(1_000_000, 0, 0, 0, 1_000_000),
            q(),
            1_380_000_000,
        ),
        // Per image by size and quality; per second of audio.
        (
            "openai",
            Flavor::OpenAi,
            "dall-e-3",
            "2025-01-01",
            Usage::default(),
            Quantities {
                images: 2,
                image_size: Some("1024x1024".into()),
                image_quality: Some("hd".into()),
                ..Quantities::default()
            },
            160_000_000,
        ),
        (
            "openai",
            Flavor::OpenAi,
            "dall-e-3",
            "2025-01-01",
            Usage::default(),
            Quantities {
                images: 1,
                image_size: Some("1024x1792".into()),
                image_quality: Some("standard".into()),
                ..Quantities::default()
            },
            80_000_000,
        ),
        (
            "openai",
            Flavor::OpenAi,
            "whisper-1",
            "2025-01-01",
            Usage::default(),
            Quantities {
                audio_millis: 8_470,
                ..Quantities::default()
            },
            847_000,
        ),
    ];
    for (provider_name, flavor, model, on, usage, quantities, want) in cases {
        let (cost, price_id) = check(provider_name, flavor, model, on, usage, quantities);
        assert_eq!(cost, Some(want), "{provider_name} {model} on {on}");
        assert!(
            price_id.is_some_and(|id| id.starts_with("config:")),
            "{model}"
        );
    }
}

#[test]
fn a_price_change_mid_month_prices_each_side_by_its_own_entry() {
    let before = check(
        "openai",
        Flavor::OpenAi,
        "gpt-4o",
        "2024-10-01",
        usage(1_000_000, 0, 0, 0, 0),
        Quantities::default(),
    );
    let after = check(
        "openai",
        Flavor::OpenAi,
        "gpt-4o",
        "2024-10-02",
        usage(1_000_000, 0, 0, 0, 0),
        Quantities::default(),
    );
    assert_eq!(before.0, Some(5_000_000_000));
    assert_eq!(after.0, Some(2_500_000_000));
    assert_ne!(
        before.1, after.1,
        "each side keeps the id of the entry that priced it"
    );
}

#[test]
fn layers_decide_first_then_specificity_then_date() {
    let file = parse_price_file(
        "[[price]]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\neffective = \"2025-01-01\"\ninput = 1.0\noutput = 1.0\n",
        Layer::File,
    )
    .unwrap();
    // The config layer (TABLE) beats the file even with an older date...
    let mut entries = parse_price_file(TABLE, Layer::Config).unwrap();
    entries.extend(file.clone());
    let table = RateTable::new(entries);
    let entry = table
        .lookup("openai", "gpt-4o", date("2025-06-01"))
        .unwrap();
    assert_eq!(entry.layer, Layer::Config);
    // ...and a layer with nothing in force at the call's date gives way to the next.
    let only_file = RateTable::new(file);
    assert!(only_file
        .lookup("openai", "gpt-4o", date("2024-12-31"))
        .is_none());
    assert!(only_file
        .lookup("openai", "gpt-4o", date("2025-01-01"))
        .is_some());
}

#[test]
fn router_ids_resolve_to_the_sellers_entry_and_reported_cost_wins() {
    let table = table(TABLE);
    for model in [
        "anthropic/claude-sonnet-4.5",
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-sonnet-4.5:thinking",
    ] {
        let entry = table.lookup("openrouter", model, date("2025-10-01"));
        assert!(
            entry.is_some_and(|e| e.provider.as_deref() == Some("anthropic")),
            "{model}"
        );
    }
    let priced = price_call(
        &table,
        "openrouter",
        ProviderPricing {
            flavor: Flavor::OpenRouter,
            markup: 0.0,
            local: false,
        },
        Some("anthropic/claude-sonnet-4.5"),
        date("2025-10-01"),
        Some(&usage(1000, 0, 0, 0, 1000)),
        &Quantities::default(),
        Some(19_000_000),
    );
    assert_eq!(priced.cost_nanos, Some(19_000_000));
    assert_eq!(priced.cost_source, Some("provider_reported"));
    // The table's figure for the same call: 1000 × 3 + 1000 × 15 per 1M = $0.018.
    assert_eq!(priced.table_cost_nanos, Some(18_000_000));
}

#[test]
fn markup_applies_on_top_of_table_prices() {
    let priced = price_call(
        &table(TABLE),
        "openai",
        ProviderPricing {
            flavor: Flavor::OpenAi,
            markup: 0.05,
            local: false,
        },
        Some("gpt-4o"),
        date("2024-11-15"),
        Some(&usage(1000, 2000, 0, 0, 500)),
        &Quantities::default(),
        None,
    );
    assert_eq!(priced.cost_nanos, Some(10_500_000));
}

#[test]
fn unknown_models_are_unpriced_never_zero_and_local_ones_are_free() {
    let table = table(TABLE);
    let unknown = price_call(
        &table,
        "openai",
        provider(Flavor::OpenAi),
        Some("gpt-9"),
        date("2025-01-01"),
        Some(&usage(10, 0, 0, 0, 10)),
        &Quantities::default(),
        None,
    );
    assert_eq!((unknown.cost_nanos, unknown.unpriced), (None, true));
    let no_model = price_call(
        &table,
        "openai",
        provider(Flavor::OpenAi),
        None,
        date("2025-01-01"),
        Some(&usage(10, 0, 0, 0, 10)),
        &Quantities::default(),
        None,
    );
    assert!(no_model.unpriced);
    let local = price_call(
        &table,
        "ollama",
        ProviderPricing {
            flavor: Flavor::Ollama,
            markup: 0.0,
            local: true,
        },
        Some("llama3.2"),
        date("2025-01-01"),
        Some(&usage(10, 0, 0, 0, 10)),
        &Quantities::default(),
        None,
    );
    assert_eq!((local.cost_nanos, local.unpriced), (Some(0), false));
    // A rejected call billed nothing, whatever its model.
    let rejected = price_call(
        &table,
        "openai",
        provider(Flavor::OpenAi),
        Some("gpt-9"),
        date("2025-01-01"),
        Some(&Usage::default()),
        &Quantities::default(),
        None,
    );
    assert_eq!((rejected.cost_nanos, rejected.unpriced), (Some(0), false));
    // Missing usage has no cost, and is not "unpriced".
    let missing = price_call(
        &table,
        "openai",
        provider(Flavor::OpenAi),
        Some("gpt-4o"),
        date("2025-01-01"),
        None,
        &Quantities::default(),
        None,
    );
    assert_eq!((missing.cost_nanos, missing.unpriced), (None, false));
    // An image size without a price is unpriced, not free.
    let odd_size = price_call(
        &table,
        "openai",
        provider(Flavor::OpenAi),
        Some("dall-e-3"),
        date("2025-01-01"),
        Some(&Usage::default()),
        &Quantities {
            images: 1,
            image_size: Some("256x256".into()),
            ..Quantities::default()
        },
        None,
    );
    assert!(odd_size.unpriced);
}

#[test]
fn globs_and_bad_entries() {
    for (pattern, text, want) in [
        ("gpt-4o*", "gpt-4o-2024-08-06", true),
        ("gpt-4o*", "gpt-4", false),
        ("claude-?-haiku*", "claude-3-haiku-20240307", true),
        ("*", "anything", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
    ] {
        assert_eq!(
            glob_match(pattern.as_bytes(), text.as_bytes()),
            want,
            "{pattern} {text}"
        );
    }
    for (text, want) in [
        ("[[price]]\nprovider = \"x\"\nmodel = \"m\"\neffective = \"2025-13-01\"\ninput = 1.0\noutput = 1.0\n", "price[0].effective"),
        ("[[price]]\nprovider = \"x\"\nmodel = \"m\"\neffective = \"2025-01-01\"\ninput = -1.0\noutput = 1.0\n", "price[0].input"),
        ("[[price]]\nprovider = \"x\"\nmodel = \"m\"\neffective = \"2025-01-01\"\ninput = 1.0\n", "price[0].output: required"),
        ("[[price]]\nprovider = \"x\"\nmodel = \"m\"\neffective = \"2025-01-01\"\ninput = 1.0\noutput = 1.0\ninptu = 2\n", "unknown field"),
    ] {
        let err = parse_price_file(text, Layer::File).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn the_builtin_table_loads_and_prices_the_current_models_of_every_provider() {
    let table = RateTable::builtin().unwrap();
    let today = date("2026-11-25");
    for (provider_name, model) in [
        ("openai", "gpt-4o-2024-08-06"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-5"),
        ("openai", "text-embedding-3-small"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-pro"),
        ("mistral", "mistral-large-latest"),
        ("xai", "grok-4"),
        ("deepseek", "deepseek-chat"),
        ("groq", "llama-3.3-70b-versatile"),
        ("openrouter", "anthropic/claude-sonnet-4"),
    ] {
        let entry = table.lookup(provider_name, model, today);
        assert!(
            entry.is_some(),
            "no built-in price for {provider_name} {model}"
        );
        let entry = entry.unwrap();
        assert!(
            entry
                .source
                .as_deref()
                .is_some_and(|s| s.starts_with("http")),
            "{} has no source",
            entry.id
        );
    }
}

#[test]
fn sums_of_stored_costs_are_exact() {
    // A million small calls: each stored cost is an integer, so the total is their exact sum,
    // and equals the cost of the summed tokens up to the per-row half-nano rounding.
    let table = table(TABLE);
    let entry = table
        .lookup("openai", "gpt-4o-mini", date("2025-01-01"))
        .unwrap();
    let one = usage(7, 3, 0, 0, 5);
    let per_call =
        pico_to_nanos(cost_pico(entry, &one, &Quantities::default(), Flavor::OpenAi).unwrap());
    let total: i64 = (0..1_000_000).map(|_| per_call).sum();
    assert_eq!(total, per_call * 1_000_000);
    let summed_usage = usage(7_000_000, 3_000_000, 0, 0, 5_000_000);
    let exact = cost_pico(entry, &summed_usage, &Quantities::default(), Flavor::OpenAi).unwrap();
    assert!((i128::from(total) * 1000 - exact).abs() <= 500 * 1_000_000);
}
