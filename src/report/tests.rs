#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn percentiles_from_histograms() {
    let histogram: Histogram = vec![(100, 50), (200, 45), (900, 5)];
    assert_eq!(percentile(&histogram, 0.5), Some(100.0));
    assert_eq!(percentile(&histogram, 0.95), Some(200.0));
    assert_eq!(percentile(&histogram, 0.96), Some(900.0));
    assert_eq!(percentile(&Vec::new(), 0.5), None);
}

#[test]
fn tokens_and_money_for_people() {
    for (tokens, want) in [
        (999, "999"),
        (9_999, "9,999"),
        (12_345, "12.3k"),
        (1_234_567, "1.2M"),
        (3_400_000_000, "3.4B"),
    ] {
        assert_eq!(format_tokens(tokens), want);
    }
    assert_eq!(exact_usd(1_972_500), "0.001972500");
    assert_eq!(exact_usd(-1), "-0.000000001");
    assert_eq!(csv_cell("a,b"), "\"a,b\"");
    assert_eq!(
        GroupBy::parse_list("model, agent,model").unwrap(),
        vec![GroupBy::Model, GroupBy::Agent]
    );
    assert!(GroupBy::parse_list("agent,color").is_err());
}
