//! `meter prices import`: reads LiteLLM's `model_prices_and_context_window.json` as it really
//! is (USD per token, cache and batch prices, tiers above 128k/200k prompt tokens,
//! `litellm_provider` and `provider/model` keys) into `[[price]]` entries for meter's providers,
//! and merges them into a `prices_file`. Pure: the caller reads and writes the files.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::Value;

use super::{RawDate, RawPrice, RawTier};

/// LiteLLM provider names and the meter provider they map to.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("text-completion-openai", "openai"),
    ("anthropic", "anthropic"),
    ("gemini", "gemini"),
    ("openrouter", "openrouter"),
    ("mistral", "mistral"),
    ("codestral", "mistral"),
    ("xai", "xai"),
    ("deepseek", "deepseek"),
    ("groq", "groq"),
];

/// LiteLLM modes that bill tokens; the rest (images by pixel, audio by second, ...) are skipped.
const TOKEN_MODES: &[&str] = &["chat", "completion", "responses", "embedding"];

const SOURCE: &str = "LiteLLM model_prices_and_context_window.json (meter prices import)";

/// What an import read.
#[derive(Debug, Default)]
pub struct Imported {
    pub prices: Vec<RawPrice>,
    /// (LiteLLM key, reason) for every entry not imported.
    pub skipped: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Entry {
    litellm_provider: Option<String>,
    mode: Option<String>,
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    cache_creation_input_token_cost: Option<f64>,
    cache_creation_input_token_cost_above_1hr: Option<f64>,
    input_cost_per_audio_token: Option<f64>,
    output_cost_per_audio_token: Option<f64>,
    input_cost_per_token_batches: Option<f64>,
    input_cost_per_token_above_128k_tokens: Option<f64>,
    output_cost_per_token_above_128k_tokens: Option<f64>,
    input_cost_per_token_above_200k_tokens: Option<f64>,
    output_cost_per_token_above_200k_tokens: Option<f64>,
    cache_read_input_token_cost_above_200k_tokens: Option<f64>,
    cache_creation_input_token_cost_above_200k_tokens: Option<f64>,
}

/// USD per token to USD per 1M tokens, without the float noise (`2.5e-06` → `2.5`).
fn per_million(per_token: f64) -> f64 {
    (per_token * 1e15).round() / 1e9
}

/// Reads a LiteLLM price file; every entry becomes a price effective from `effective`, or a
/// skip with its reason.
pub fn parse(json: &[u8], effective: NaiveDate) -> Result<Imported, String> {
    let file: BTreeMap<String, Value> = serde_json::from_slice(json)
        .map_err(|err| format!("not a LiteLLM price file (a JSON object of models): {err}"))?;
    let mut imported = Imported::default();
    // Several LiteLLM keys can name the same model of a meter provider (`deepseek-chat` and
    // `deepseek/deepseek-chat`, `codestral/...` and `mistral/...`): the key routed through the
    // provider's own name wins, then a prefixed key, then a bare one.
    let mut chosen: BTreeMap<(String, String), (u8, String)> = BTreeMap::new();
    for (key, value) in file {
        if key == "sample_spec" {
            continue;
        }
        let entry: Entry = match serde_json::from_value(value) {
            Ok(entry) => entry,
            Err(err) => {
                imported
                    .skipped
                    .push((key, format!("unreadable entry: {err}")));
                continue;
            }
        };
        let litellm_provider = entry.litellm_provider.as_deref().unwrap_or("");
        let Some((_, provider)) = PROVIDERS.iter().find(|(l, _)| *l == litellm_provider) else {
            imported.skipped.push((
                key,
                format!("provider {litellm_provider:?} is not one of meter's"),
            ));
            continue;
        };
        if let Some(mode) = &entry.mode {
            if !TOKEN_MODES.contains(&mode.as_str()) {
                imported
                    .skipped
                    .push((key, format!("not billed by token (mode {mode})")));
                continue;
            }
        }
        let Some(input) = entry.input_cost_per_token else {
            imported
                .skipped
                .push((key, "no per-token input price".to_string()));
            continue;
        };
        let embedding = entry.mode.as_deref() == Some("embedding");
        let output = match entry.output_cost_per_token {
            Some(output) => output,
            None if embedding => 0.0,
            None => {
                imported
                    .skipped
                    .push((key, "no per-token output price".to_string()));
                continue;
            }
        };
        // A free-tier or placeholder entry must not shadow a paid built-in price.
        if input == 0.0 && output == 0.0 {
            imported
                .skipped
                .push((key, "priced at $0 (free tier or placeholder)".to_string()));
            continue;
        }
        // `groq/llama-3.3-70b-versatile` is `llama-3.3-70b-versatile` on Groq;
        // `openrouter/anthropic/claude-3.5-sonnet` is `anthropic/claude-3.5-sonnet` there.
        let model = key
            .strip_prefix(litellm_provider)
            .and_then(|rest| rest.strip_prefix('/'))
            .or_else(|| {
                key.strip_prefix(provider)
                    .and_then(|rest| rest.strip_prefix('/'))
            })
            .unwrap_or(&key)
            .to_string();
        let mut tier = Vec::new();
        for (threshold, tier_input, tier_output) in [
            (
                128_000,
                entry.input_cost_per_token_above_128k_tokens,
                entry.output_cost_per_token_above_128k_tokens,
            ),
            (
                200_000,
                entry.input_cost_per_token_above_200k_tokens,
                entry.output_cost_per_token_above_200k_tokens,
            ),
        ] {
            if let Some(tier_input) = tier_input {
                let above_200k = threshold == 200_000;
                tier.push(RawTier {
                    above_prompt_tokens: threshold,
                    input: per_million(tier_input),
                    output: per_million(tier_output.or(entry.output_cost_per_token).unwrap_or(0.0)),
                    cache_read: entry
                        .cache_read_input_token_cost_above_200k_tokens
                        .filter(|_| above_200k)
                        .map(per_million),
                    cache_write: entry
                        .cache_creation_input_token_cost_above_200k_tokens
                        .filter(|_| above_200k)
                        .map(per_million),
                    cache_write_1h: None,
                });
            }
        }
        let batch_discount = entry
            .input_cost_per_token_batches
            .filter(|_| input > 0.0)
            .map(|batch| ((1.0 - batch / input) * 1e6).round() / 1e6)
            .filter(|d| (0.0..=1.0).contains(d));
        let rank = if key.starts_with(&format!("{provider}/")) {
            2
        } else if key.contains('/') && !model.contains('/') {
            1
        } else {
            0
        };
        let slot = (provider.to_string(), model.clone());
        if let Some((best, best_key)) = chosen.get(&slot) {
            if *best >= rank {
                imported
                    .skipped
                    .push((key, format!("duplicate of {best_key}")));
                continue;
            }
            let replaced = best_key.clone();
            imported
                .prices
                .retain(|p| !(p.provider == slot.0 && p.model == slot.1));
            imported
                .skipped
                .push((replaced, format!("duplicate of {key}")));
        }
        chosen.insert(slot, (rank, key.clone()));
        let price = RawPrice {
            provider: provider.to_string(),
            model,
            effective: RawDate::Text(effective.to_string()),
            input: Some(per_million(input)),
            output: Some(per_million(output)),
            cache_read: entry.cache_read_input_token_cost.map(per_million),
            cache_write: entry.cache_creation_input_token_cost.map(per_million),
            cache_write_1h: entry
                .cache_creation_input_token_cost_above_1hr
                .map(per_million),
            audio_input: entry.input_cost_per_audio_token.map(per_million),
            audio_output: entry.output_cost_per_audio_token.map(per_million),
            image_input: None,
            batch_discount,
            per_image: None,
            per_audio_second: None,
            per_web_search: None,
            source: Some(SOURCE.to_string()),
            tier,
        };
        // Nothing meter could not load back goes into the prices file.
        if let Err(reason) = price.validate(&key, super::Layer::File) {
            chosen.remove(&(price.provider.clone(), price.model.clone()));
            imported.skipped.push((key, format!("invalid: {reason}")));
            continue;
        }
        imported.prices.push(price);
    }
    Ok(imported)
}

/// What a merge did, entry by entry (`provider/model`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The prices of an entry, without its date and source: what "changed" compares.
fn prices_of(price: &RawPrice) -> RawPrice {
    RawPrice {
        effective: RawDate::Text(String::new()),
        source: None,
        ..price.clone()
    }
}

fn date_of(price: &RawPrice) -> Option<NaiveDate> {
    price.effective.parse()
}

/// Merges `imported` into `existing`: a model whose latest price is the same is left alone; a
/// new model is added; a model whose price differs gets a new entry from the import's date
/// (the old one stays, so history is priced by the old figure), or is replaced when it already
/// has an entry on that very date.
pub fn merge(existing: &mut Vec<RawPrice>, imported: Vec<RawPrice>) -> MergeReport {
    let mut report = MergeReport::default();
    for price in imported {
        let name = format!("{}/{}", price.provider, price.model);
        let date = date_of(&price);
        let same_model = |p: &RawPrice| p.provider == price.provider && p.model == price.model;
        let latest = existing
            .iter()
            .enumerate()
            .filter(|(_, p)| same_model(p) && date_of(p) <= date)
            .max_by_key(|(_, p)| date_of(p))
            .map(|(i, p)| (i, date_of(p) == date, prices_of(p) == prices_of(&price)));
        match latest {
            Some((_, _, true)) => report.unchanged.push(name),
            Some((i, true, false)) => {
                existing[i] = price;
                report.changed.push(name);
            }
            Some((_, false, false)) => {
                existing.push(price);
                report.changed.push(name);
            }
            None => {
                existing.push(price);
                report.added.push(name);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SAMPLE: &str = r#"{
      "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
      "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                 "input_cost_per_token_batches": 1.25e-06, "cache_read_input_token_cost": 1.25e-06,
                 "litellm_provider": "openai", "mode": "chat"},
      "gemini/gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "input_cost_per_token_above_200k_tokens": 2.5e-06,
                 "output_cost_per_token": 1e-05, "output_cost_per_token_above_200k_tokens": 1.5e-05,
                 "cache_read_input_token_cost": 3.125e-07, "litellm_provider": "gemini", "mode": "chat"},
      "openrouter/anthropic/claude-3.5-sonnet": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                 "litellm_provider": "openrouter", "mode": "chat"},
      "bedrock/anthropic.claude-v2": {"input_cost_per_token": 8e-06, "output_cost_per_token": 2.4e-05,
                 "litellm_provider": "bedrock", "mode": "chat"},
      "dall-e-3": {"input_cost_per_pixel": 4e-08, "output_cost_per_token": 0.0,
                 "litellm_provider": "openai", "mode": "image_generation"},
      "whisper-1": {"input_cost_per_second": 0.0001, "output_cost_per_second": 0.0001,
                 "litellm_provider": "openai", "mode": "audio_transcription"}
    }"#;

    #[test]
    fn reads_litellm_as_it_is() {
        let date = NaiveDate::from_ymd_opt(2025, 9, 1).unwrap();
        let imported = parse(SAMPLE.as_bytes(), date).unwrap();
        let by_model: BTreeMap<_, _> = imported
            .prices
            .iter()
            .map(|p| (format!("{}/{}", p.provider, p.model), p))
            .collect();
        assert_eq!(by_model.len(), 3, "{by_model:?}");
        let gpt = by_model["openai/gpt-4o"];
        assert_eq!(
            (gpt.input, gpt.output, gpt.cache_read),
            (Some(2.5), Some(10.0), Some(1.25))
        );
        assert_eq!(gpt.batch_discount, Some(0.5));
        let gemini = by_model["gemini/gemini-2.5-pro"];
        assert_eq!(gemini.tier.len(), 1);
        assert_eq!(
            (
                gemini.tier[0].above_prompt_tokens,
                gemini.tier[0].input,
                gemini.tier[0].output
            ),
            (200_000, 2.5, 15.0)
        );
        assert!(by_model.contains_key("openrouter/anthropic/claude-3.5-sonnet"));
        let reasons: Vec<_> = imported.skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            reasons,
            vec!["bedrock/anthropic.claude-v2", "dall-e-3", "whisper-1"]
        );
    }

    #[test]
    fn merge_adds_changes_and_keeps_history() {
        let date = NaiveDate::from_ymd_opt(2025, 9, 1).unwrap();
        let mut existing = parse(
            SAMPLE.as_bytes(),
            NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        )
        .unwrap()
        .prices;
        let before = existing.len();
        let mut again = parse(SAMPLE.as_bytes(), date).unwrap().prices;
        // One price moved.
        again[0].output = Some(12.0);
        let moved = format!("{}/{}", again[0].provider, again[0].model);
        let report = merge(&mut existing, again);
        assert_eq!(report.changed, vec![moved]);
        assert_eq!(report.unchanged.len(), 2);
        assert!(report.added.is_empty());
        assert_eq!(
            existing.len(),
            before + 1,
            "the old price stays for history"
        );
    }
}
