//! Pricing: the effective-dated rate table and the cost of a call. Pure: a function of (usage,
//! quantities, provider, model, time, table), shared by the ledger writer and `meter reprice`.
//!
//! Money is exact integer arithmetic: prices become pico-dollars (1e-12 USD) per token, per
//! image, per second or per call when the table is loaded; a call's cost is summed in `i128`
//! pico-dollars and rounded once, half up, to the nano-dollars (1e-9 USD) the ledger stores.
//! Sums of stored costs are sums of integers, so a total always equals the sum of its parts.

pub mod litellm;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::usage::{Flavor, Quantities, Usage};

/// Pico-dollars in one dollar.
pub const PICO_PER_USD: f64 = 1e12;

/// The built-in table, compiled in (`src/pricing/builtin.toml`).
pub const BUILTIN_TOML: &str = include_str!("builtin.toml");

/// Where an entry comes from. Layers decide first (SPEC §6): config beats `prices_file`, which
/// beats the built-in table, whatever their dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Config,
    File,
    Builtin,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Config => "config",
            Layer::File => "prices_file",
            Layer::Builtin => "builtin",
        }
    }
}

/// An effective date as written in TOML: a date literal (`2024-10-01`) or a string.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawDate {
    Date(toml::value::Datetime),
    Text(String),
}

impl RawDate {
    fn parse(&self) -> Option<NaiveDate> {
        let text = match self {
            RawDate::Date(date) => date.to_string(),
            RawDate::Text(text) => text.clone(),
        };
        NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()
    }
}

/// One `[[price]]` entry as written in config, `prices_file` or the built-in table. USD per
/// 1M tokens unless the key says otherwise.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub provider: String,
    pub model: String,
    pub effective: RawDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount: Option<f64>,
    /// USD per image, keyed `SIZE` or `SIZE:QUALITY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_audio_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_web_search: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier: Vec<RawTier>,
}

/// Prices that apply when the prompt is larger than `above_prompt_tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub above_prompt_tokens: u64,
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
}

/// A file of `[[price]]` entries (`prices_file`, the built-in table).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    #[serde(default)]
    pub price: Vec<RawPrice>,
}

/// Per-token prices in pico-dollars (USD per 1M tokens × 1e6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: i128,
    pub output: i128,
    pub cache_read: Option<i128>,
    pub cache_write: Option<i128>,
    pub cache_write_1h: Option<i128>,
}

/// A validated rate-table entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RateEntry {
    /// Stable name of the entry, stored with every row it prices: `layer:provider/model@date`.
    pub id: String,
    pub layer: Layer,
    /// `None` for `*`.
    pub provider: Option<String>,
    pub model: ModelPattern,
    pub effective: NaiveDate,
    pub rates: Rates,
    /// Ascending by threshold.
    pub tiers: Vec<(u64, Rates)>,
    pub audio_input: Option<i128>,
    pub audio_output: Option<i128>,
    pub image_input: Option<i128>,
    pub per_image: Vec<(String, i128)>,
    pub per_audio_second: Option<i128>,
    pub per_web_search: Option<i128>,
    pub batch_discount: Option<f64>,
    pub source: Option<String>,
    pub raw: RawPrice,
}

/// A model name or a glob (`*` any run, `?` one character), matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    Exact(String),
    Glob(String),
}

impl ModelPattern {
    fn new(text: &str) -> ModelPattern {
        let lower = text.to_ascii_lowercase();
        if lower.contains(['*', '?']) {
            ModelPattern::Glob(lower)
        } else {
            ModelPattern::Exact(lower)
        }
    }

    /// `model` is already lowercase.
    fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(exact) => exact == model,
            ModelPattern::Glob(glob) => glob_match(glob.as_bytes(), model.as_bytes()),
        }
    }

    /// Higher is more specific: an exact name beats any glob; a glob with more literal
    /// characters beats a shorter one.
    fn specificity(&self) -> usize {
        match self {
            ModelPattern::Exact(_) => usize::MAX,
            ModelPattern::Glob(glob) => glob.bytes().filter(|b| !matches!(b, b'*' | b'?')).count(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ModelPattern::Exact(s) | ModelPattern::Glob(s) => s,
        }
    }
}

/// Whether `text` matches `pattern`: exact, or a glob where `*` matches any run and `?` one byte.
pub fn glob_match_str(pattern: &str, text: &str) -> bool {
    glob_match(pattern.as_bytes(), text.as_bytes())
}

/// Wildcard match without recursion: `*` matches any run, `?` one byte.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// Converts USD (per 1M tokens, or per unit) to pico-dollars (per token, or per unit).
fn pico(usd: f64, per_million: bool) -> i128 {
    let scale = if per_million { 1e6 } else { PICO_PER_USD };
    (usd * scale).round() as i128
}

fn check_price(key: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && (0.0..1e6).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{key}: {value} is not a price (USD, 0 or more)"))
    }
}

fn opt_price(key: &str, value: Option<f64>) -> Result<Option<i128>, String> {
    value
        .map(|v| check_price(key, v).map(|v| pico(v, true)))
        .transpose()
}

impl RawPrice {
    /// Validates one entry; `key` names it in errors (e.g. `price[3]`).
    pub fn validate(&self, key: &str, layer: Layer) -> Result<RateEntry, String> {
        let effective = self.effective.parse().ok_or_else(|| {
            format!(
                "{key}.effective: {:?} is not a date (YYYY-MM-DD)",
                self.effective
            )
        })?;
        if self.provider.trim().is_empty() {
            return Err(format!(
                "{key}.provider: must not be empty (a provider name or \"*\")"
            ));
        }
        if self.model.trim().is_empty() {
            return Err(format!("{key}.model: must not be empty"));
        }
        let per_unit = self.per_image.is_some() || self.per_audio_second.is_some();
        let (input, output) = match (self.input, self.output) {
            (Some(input), Some(output)) => (input, output),
            (None, None) if per_unit => (0.0, 0.0),
            (None, _) => return Err(format!("{key}.input: required (USD per 1M input tokens)")),
            (_, None) => return Err(format!("{key}.output: required (USD per 1M output tokens)")),
        };
        let rates = Rates {
            input: pico(check_price(&format!("{key}.input"), input)?, true),
            output: pico(check_price(&format!("{key}.output"), output)?, true),
            cache_read: opt_price(&format!("{key}.cache_read"), self.cache_read)?,
            cache_write: opt_price(&format!("{key}.cache_write"), self.cache_write)?,
            cache_write_1h: opt_price(&format!("{key}.cache_write_1h"), self.cache_write_1h)?,
        };
        let mut tiers = Vec::new();
        for (i, tier) in self.tier.iter().enumerate() {
            let tkey = format!("{key}.tier[{i}]");
            tiers.push((
                tier.above_prompt_tokens,
                Rates {
                    input: pico(check_price(&format!("{tkey}.input"), tier.input)?, true),
                    output: pico(check_price(&format!("{tkey}.output"), tier.output)?, true),
                    cache_read: opt_price(&format!("{tkey}.cache_read"), tier.cache_read)?,
                    cache_write: opt_price(&format!("{tkey}.cache_write"), tier.cache_write)?,
                    cache_write_1h: opt_price(
                        &format!("{tkey}.cache_write_1h"),
                        tier.cache_write_1h,
                    )?,
                },
            ));
        }
        tiers.sort_by_key(|(threshold, _)| *threshold);
        let mut per_image = Vec::new();
        for (size, usd) in self.per_image.iter().flatten() {
            let usd = check_price(&format!("{key}.per_image.{size}"), *usd)?;
            per_image.push((size.to_ascii_lowercase(), pico(usd, false)));
        }
        let per_unit = |name: &str, value: Option<f64>| {
            value
                .map(|v| check_price(&format!("{key}.{name}"), v).map(|v| pico(v, false)))
                .transpose()
        };
        if let Some(discount) = self.batch_discount {
            if !(0.0..=1.0).contains(&discount) {
                return Err(format!(
                    "{key}.batch_discount: {discount} is not a fraction between 0 and 1"
                ));
            }
        }
        let provider = (self.provider != "*").then(|| self.provider.to_ascii_lowercase());
        Ok(RateEntry {
            id: format!(
                "{}:{}/{}@{}",
                layer.as_str(),
                self.provider,
                self.model,
                effective
            ),
            layer,
            provider,
            model: ModelPattern::new(&self.model),
            effective,
            rates,
            tiers,
            audio_input: opt_price(&format!("{key}.audio_input"), self.audio_input)?,
            audio_output: opt_price(&format!("{key}.audio_output"), self.audio_output)?,
            image_input: opt_price(&format!("{key}.image_input"), self.image_input)?,
            per_image,
            per_audio_second: per_unit("per_audio_second", self.per_audio_second)?,
            per_web_search: per_unit("per_web_search", self.per_web_search)?,
            batch_discount: self.batch_discount,
            source: self.source.clone(),
            raw: self.clone(),
        })
    }
}

/// Parses a TOML file of `[[price]]` entries into validated entries of `layer`.
pub fn parse_price_file(text: &str, layer: Layer) -> Result<Vec<RateEntry>, String> {
    let file: PriceFile = toml::from_str(text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {}", err.message()),
            None => err.message().to_string(),
        }
    })?;
    file.price
        .iter()
        .enumerate()
        .map(|(i, raw)| raw.validate(&format!("price[{i}]"), layer))
        .collect()
}

/// The rate table: every layer's entries.
#[derive(Debug, Clone, Default)]
pub struct RateTable {
    entries: Vec<RateEntry>,
    /// Entry positions by provider (`None` for `*`), in layer order: a lookup looks at one
    /// provider's entries and the wildcard ones, not the whole table.
    by_provider: std::collections::HashMap<Option<String>, Vec<usize>>,
    memo: LookupMemo,
}

/// Lookups already made, by (provider, model, date): a call's price is found once per model and
/// day instead of by walking the layers and name variants every time (a lookup costs a few
/// microseconds, a memo hit a hash). The table never changes after it is built, so an answer
/// never goes stale; the memo is emptied when it reaches `MEMO_CAP` names.
#[derive(Default)]
struct LookupMemo(std::sync::RwLock<std::collections::HashMap<String, Option<usize>>>);

const MEMO_CAP: usize = 16_384;

impl std::fmt::Debug for LookupMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LookupMemo")
    }
}

impl Clone for LookupMemo {
    fn clone(&self) -> Self {
        LookupMemo::default()
    }
}

impl RateTable {
    /// The built-in table alone.
    pub fn builtin() -> Result<RateTable, String> {
        let entries = parse_price_file(BUILTIN_TOML, Layer::Builtin)
            .map_err(|err| format!("built-in price table: {err}"))?;
        Ok(RateTable::new(entries))
    }

    /// A table of `entries` (any layers).
    pub fn new(mut entries: Vec<RateEntry>) -> RateTable {
        entries.sort_by_key(|entry| entry.layer);
        let mut by_provider: std::collections::HashMap<Option<String>, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            by_provider
                .entry(entry.provider.clone())
                .or_default()
                .push(i);
        }
        RateTable {
            entries,
            by_provider,
            memo: LookupMemo::default(),
        }
    }

    /// The table from its layers: config entries, `prices_file` entries, the built-in table.
    pub fn from_layers(config: Vec<RateEntry>, file: Vec<RateEntry>) -> Result<RateTable, String> {
        let mut entries = RateTable::builtin()?.entries;
        entries.extend(config);
        entries.extend(file);
        Ok(RateTable::new(entries))
    }

    pub fn entries(&self) -> &[RateEntry] {
        &self.entries
    }

    /// The entry that prices `model` on `provider` on `date`, if any (SPEC §6): layers decide
    /// first; within a layer the most specific match wins, then the latest `effective` date not
    /// after the call. Dated snapshots and router ids fall back to their model's entry.
    pub fn lookup(&self, provider: &str, model: &str, date: NaiveDate) -> Option<&RateEntry> {
        use chrono::Datelike;
        use std::fmt::Write;
        let mut key = String::with_capacity(provider.len() + model.len() + 12);
        let _ = write!(key, "{provider}\0{model}\0{}", date.num_days_from_ce());
        if let Some(found) = self
            .memo
            .0
            .read()
            .ok()
            .and_then(|memo| memo.get(&key).copied())
        {
            return found.map(|i| &self.entries[i]);
        }
        let found = self.find(provider, model, date);
        if let Ok(mut memo) = self.memo.0.write() {
            if memo.len() >= MEMO_CAP {
                memo.clear();
            }
            memo.insert(key, found);
        }
        found.map(|i| &self.entries[i])
    }

    /// [`RateTable::lookup`] without the memo: the position of the entry.
    fn find(&self, provider: &str, model: &str, date: NaiveDate) -> Option<usize> {
        let provider = provider.to_ascii_lowercase();
        let candidates = candidates(&provider, model);
        let wildcard = self
            .by_provider
            .get(&None)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for layer in [Layer::Config, Layer::File, Layer::Builtin] {
            for (candidate_provider, candidate_model) in &candidates {
                let own = self
                    .by_provider
                    .get(&Some(candidate_provider.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let best = own
                    .iter()
                    .chain(wildcard)
                    .copied()
                    .filter(|&i| {
                        let e = &self.entries[i];
                        e.layer == layer && e.effective <= date && e.model.matches(candidate_model)
                    })
                    .max_by_key(|&i| {
                        let e = &self.entries[i];
                        (e.provider.is_some(), e.model.specificity(), e.effective)
                    });
                if best.is_some() {
                    return best;
                }
            }
        }
        None
    }
}

/// Router vendor prefixes (`anthropic/claude-sonnet-4`) and the provider that sells the model.
const VENDORS: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("google", "gemini"),
    ("mistralai", "mistral"),
    ("x-ai", "xai"),
    ("xai", "xai"),
    ("deepseek", "deepseek"),
];

/// The (provider, model) names to try, most literal first: the name as reported, without a
/// `models/` prefix, without a date or `-latest` suffix; then, for `vendor/model` ids, the
/// vendor's own provider.
fn candidates(provider: &str, model: &str) -> Vec<(String, String)> {
    let mut names = Vec::new();
    let lower = model.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("models/").unwrap_or(&lower).to_string();
    let push = |p: &str, m: String, names: &mut Vec<(String, String)>| {
        if !m.is_empty() && !names.iter().any(|(np, nm)| np == p && *nm == m) {
            names.push((p.to_string(), m));
        }
    };
    push(provider, lower.clone(), &mut names);
    push(provider, strip_version_suffix(&lower), &mut names);
    if let Some((vendor, rest)) = lower.split_once('/') {
        if let Some((_, seller)) = VENDORS.iter().find(|(v, _)| *v == vendor) {
            // OpenRouter ids drop variant tags such as `:free` or `:thinking`.
            let rest = rest.split(':').next().unwrap_or(rest);
            push(seller, rest.to_string(), &mut names);
            push(seller, strip_version_suffix(rest), &mut names);
            // OpenRouter writes `claude-sonnet-4.5` where Anthropic writes `claude-sonnet-4-5`.
            let dashed = rest.replace('.', "-");
            push(seller, dashed.clone(), &mut names);
            push(seller, strip_version_suffix(&dashed), &mut names);
            // ...and `claude-sonnet-4` where Anthropic's alias is `claude-sonnet-4-0`.
            if *seller == "anthropic" {
                push(seller, format!("{dashed}-0"), &mut names);
            }
        }
    }
    names
}

/// The names a model goes by for scoping (budgets): as given (lower case, without a `models/`
/// prefix) and without its date or `-latest` suffix, so `gpt-4o` matches what the provider
/// reports back as `gpt-4o-2024-08-06`.
pub fn model_names(model: &str) -> [String; 2] {
    let lower = model.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("models/").unwrap_or(&lower).to_string();
    let base = strip_version_suffix(&lower);
    [lower, base]
}

/// `gpt-4o-2024-08-06` → `gpt-4o`; `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`;
/// `mistral-large-2411` → `mistral-large`; `mistral-large-latest` → `mistral-large`.
fn strip_version_suffix(model: &str) -> String {
    let parts: Vec<&str> = model.split('-').collect();
    let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let n = parts.len();
    if n > 3
        && is_digits(parts[n - 3], 4)
        && is_digits(parts[n - 2], 2)
        && is_digits(parts[n - 1], 2)
    {
        return parts[..n - 3].join("-");
    }
    if n > 1
        && (is_digits(parts[n - 1], 8) || is_digits(parts[n - 1], 4) || parts[n - 1] == "latest")
    {
        return parts[..n - 1].join("-");
    }
    model.to_string()
}

/// What the provider documents for cache prices an entry leaves out, as fractions of the input
/// price: (cache read, cache write, 1-hour cache write). Otherwise the input price applies.
fn cache_fallbacks(flavor: Flavor) -> (f64, f64, f64) {
    match flavor {
        // https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#pricing
        Flavor::Anthropic => (0.1, 1.25, 2.0),
        // https://platform.openai.com/docs/guides/prompt-caching (older models: half price)
        Flavor::OpenAi | Flavor::Azure => (0.5, 1.0, 1.0),
        // https://ai.google.dev/gemini-api/docs/caching (2.5 models: a quarter)
        Flavor::Gemini | Flavor::Vertex => (0.25, 1.0, 1.0),
        _ => (1.0, 1.0, 1.0),
    }
}

/// Why a call could not be priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpriced {
    /// No entry for the model.
    UnknownModel,
    /// The entry bills images by size, and this size (or quality) has no price.
    UnknownImageSize,
}

/// The cost of one call under `entry`, in pico-dollars, before markup.
pub fn cost_pico(
    entry: &RateEntry,
    usage: &Usage,
    quantities: &Quantities,
    flavor: Flavor,
) -> Result<i128, Unpriced> {
    let prompt = usage
        .input_tokens
        .saturating_add(usage.cache_read_tokens)
        .saturating_add(usage.cache_write_tokens);
    let rates = entry
        .tiers
        .iter()
        .rev()
        .find(|(threshold, _)| prompt > *threshold)
        .map(|(_, rates)| *rates)
        .unwrap_or(entry.rates);
    let (read_share, write_share, write_1h_share) = cache_fallbacks(flavor);
    let share = |price: i128, fraction: f64| (price as f64 * fraction).round() as i128;
    let cache_read = rates.cache_read.unwrap_or(share(rates.input, read_share));
    let cache_write = rates.cache_write.unwrap_or(share(rates.input, write_share));
    let cache_write_1h = rates
        .cache_write_1h
        .unwrap_or(share(rates.input, write_1h_share));
    let t = |n: u64| n as i128;

    // Audio tokens refine input and output: priced at their own rate where the entry has one.
    let audio_in = quantities.audio_input_tokens.min(usage.input_tokens);
    let audio_out = quantities.audio_output_tokens.min(usage.output_tokens);
    let audio_in_price = entry.audio_input.unwrap_or(rates.input);
    let audio_out_price = entry.audio_output.unwrap_or(rates.output);
    let write_1h = usage.cache_write_1h_tokens.min(usage.cache_write_tokens);

    let mut total = t(usage.input_tokens - audio_in) * rates.input
        + t(audio_in) * audio_in_price
        + t(usage.cache_read_tokens) * cache_read
        + t(usage.cache_write_tokens - write_1h) * cache_write
        + t(write_1h) * cache_write_1h
        + t(usage.output_tokens - audio_out) * rates.output
        + t(audio_out) * audio_out_price;

    if quantities.images > 0 && !entry.per_image.is_empty() {
        let size = quantities
            .image_size
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        let quality = quantities
            .image_quality
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        let with_quality = format!("{size}:{quality}");
        let price = entry
            .per_image
            .iter()
            .find(|(key, _)| *key == with_quality)
            .or_else(|| entry.per_image.iter().find(|(key, _)| *key == size))
            .map(|(_, price)| *price)
            .ok_or(Unpriced::UnknownImageSize)?;
        total += t(quantities.images) * price;
    }
    if let Some(per_second) = entry.per_audio_second {
        total += t(quantities.audio_millis) * per_second / 1000;
    }
    if let Some(per_call) = entry.per_web_search {
        total += t(quantities.web_search_calls) * per_call;
    }
    Ok(total)
}

/// `pico × (1 + markup)`, with the markup in parts per million, rounded once.
pub fn with_markup(pico: i128, markup: f64) -> i128 {
    let ppm = (markup * 1e6).round() as i128;
    pico.saturating_mul(1_000_000 + ppm).saturating_add(500_000) / 1_000_000
}

/// Pico-dollars to the ledger's nano-dollars, half up.
pub fn pico_to_nanos(pico: i128) -> i64 {
    let nanos = (pico + 500) / 1000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// The provider facts pricing needs.
#[derive(Debug, Clone, Copy)]
pub struct ProviderPricing {
    pub flavor: Flavor,
    pub markup: f64,
    pub local: bool,
}

/// How a call was priced: what the ledger stores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Priced {
    pub cost_nanos: Option<i64>,
    pub cost_source: Option<&'static str>,
    pub price_id: Option<String>,
    /// What the table says the call costs at the seller's list price, before any markup, even
    /// when the provider reported its own figure: the difference is what the router charged.
    pub table_cost_nanos: Option<i64>,
    /// No price for a call that needed one.
    pub unpriced: bool,
}

/// Prices one call (SPEC §6). `usage` is `None` when its usage is unknown (`missing`).
#[allow(clippy::too_many_arguments)]
pub fn price_call(
    table: &RateTable,
    provider_name: &str,
    provider: ProviderPricing,
    model: Option<&str>,
    date: NaiveDate,
    usage: Option<&Usage>,
    quantities: &Quantities,
    reported_cost_nanos: Option<i64>,
) -> Priced {
    let entry = model.and_then(|m| table.lookup(provider_name, m, date));
    // The table's figure before any markup: what the same call costs at the seller's list
    // price (for a router, on a direct key). The markup is added to the cost below.
    let table_pico = match (entry, usage) {
        (Some(entry), Some(usage)) => cost_pico(entry, usage, quantities, provider.flavor).ok(),
        _ => None,
    };
    let table_cost = table_pico.map(pico_to_nanos);
    let price_id = entry.map(|e| e.id.clone());
    if let Some(reported) = reported_cost_nanos {
        return Priced {
            cost_nanos: Some(reported),
            cost_source: Some("provider_reported"),
            price_id,
            table_cost_nanos: table_cost,
            unpriced: false,
        };
    }
    let Some(usage) = usage else {
        // Unknown usage has an unknown cost; it is flagged as missing usage, not as unpriced.
        return Priced {
            price_id,
            ..Priced::default()
        };
    };
    if let Some(pico) = table_pico {
        return Priced {
            cost_nanos: Some(pico_to_nanos(with_markup(pico, provider.markup))),
            cost_source: Some("rate_table"),
            price_id,
            table_cost_nanos: table_cost,
            unpriced: false,
        };
    }
    let nothing_billed = *usage == Usage::default()
        && quantities.images == 0
        && quantities.audio_millis == 0
        && quantities.web_search_calls == 0;
    if (provider.local || nothing_billed) && entry.is_none() {
        // A local model, or a call that billed nothing: free, whatever the model.
        return Priced {
            cost_nanos: Some(0),
            cost_source: Some("rate_table"),
            price_id: None,
            table_cost_nanos: Some(0),
            unpriced: false,
        };
    }
    Priced {
        price_id,
        unpriced: true,
        ..Priced::default()
    }
}

#[cfg(test)]
mod tests;
