//! Money for people: nano-dollars (the ledger's integers) rendered as `$1,234.56`, with enough
//! digits below a cent that a small non-zero amount never reads as `$0.00`. Pure.

/// `$1,234.56`; amounts under a cent keep up to three significant digits (`$0.000197`).
pub fn format_usd(nanos: i64) -> String {
    let negative = nanos < 0;
    let abs = nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    if abs == 0 {
        return "$0.00".to_string();
    }
    if abs < 10_000_000 {
        // Under a cent: up to three significant digits, at most nine decimals.
        let decimals = (12 - abs.to_string().len()).min(9);
        let rounded = format!("{:.*}", decimals, abs as f64 / 1e9);
        let trimmed = rounded.trim_end_matches('0').trim_end_matches('.');
        return format!("{sign}${trimmed}");
    }
    // Cents, rounded half up.
    let cents = (abs + 5_000_000) / 10_000_000;
    let dollars = cents / 100;
    let cents = cents % 100;
    format!("{sign}${}.{cents:02}", group_thousands(dollars))
}

/// A price in USD per 1M tokens as written in the table: shortest exact decimal.
pub fn format_rate(pico_per_token: i128) -> String {
    let usd_per_million = pico_per_token as f64 / 1e6;
    let text = format!("{usd_per_million:.6}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    format!("${trimmed}")
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_money_for_people() {
        for (nanos, want) in [
            (0, "$0.00"),
            (1_234_560_000_000, "$1,234.56"),
            (10_000_000, "$0.01"),
            (1_972_500, "$0.00197"),
            (1, "$0.000000001"),
            (123_456, "$0.000123"),
            (5_000_000, "$0.005"),
            (-2_500_000_000, "-$2.50"),
            (999_999_999_999_999, "$1,000,000.00"),
        ] {
            assert_eq!(format_usd(nanos), want, "{nanos}");
        }
        assert_eq!(format_rate(2_500_000), "$2.5");
        assert_eq!(format_rate(37_500), "$0.0375");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(999), "999");
    }
}
