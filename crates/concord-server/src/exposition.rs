//! Reading values back out of a Prometheus text exposition (tests and tools that scrape `/metrics`).

/// The value of the sample `name` whose labels are exactly `labels` (in any order).
///
/// `name` is the sample's full name (`concord_errors_total`, `concord_store_commit_seconds_count`).
/// A metric that is exported but has no sample with these labels yet (a labelled counter never
/// incremented) reads 0; a name the exposition does not declare at all is an error, so a typo
/// cannot pass as a zero.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let mut declared = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let base = rest.split_whitespace().next().unwrap_or("");
            declared |= name == base
                || name
                    .strip_prefix(base)
                    .is_some_and(|s| ["_total", "_count", "_sum", "_bucket"].contains(&s));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((sample_name, sample_labels, value)) = parse_line(line) else {
            continue;
        };
        if sample_name != name || sample_labels.len() != labels.len() {
            continue;
        }
        let same = labels
            .iter()
            .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if same {
            return Ok(value);
        }
    }
    if declared {
        Ok(0.0)
    } else {
        Err(format!("no metric {name} in the exposition"))
    }
}

/// The labels of one sample, as (name, value) pairs.
type Labels = Vec<(String, String)>;

/// `name{k="v",…} value` → (name, labels, value).
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP concord_errors Error replies by code.
# TYPE concord_errors counter
concord_errors_total{code="rate_limited"} 3
concord_errors_total{code="bad_request"} 12
# TYPE concord_connections gauge
concord_connections 2
# TYPE concord_store_commit_seconds histogram
concord_store_commit_seconds_sum 0.5
concord_store_commit_seconds_count 7
concord_store_commit_seconds_bucket{le="+Inf"} 7
# TYPE concord_odd counter
concord_odd_total{a="x,y=\"z\"",b="2"} 1.5
# EOF
"#;

    #[test]
    fn reads_samples_by_name_and_exact_labels() {
        let code = |c| sample(TEXT, "concord_errors_total", &[("code", c)]);
        assert_eq!(code("rate_limited"), Ok(3.0));
        assert_eq!(code("bad_request"), Ok(12.0));
        assert_eq!(code("conflict"), Ok(0.0), "declared, never incremented");
        assert_eq!(sample(TEXT, "concord_connections", &[]), Ok(2.0));
        assert_eq!(
            sample(TEXT, "concord_store_commit_seconds_count", &[]),
            Ok(7.0)
        );
        assert_eq!(
            sample(
                TEXT,
                "concord_store_commit_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Ok(7.0)
        );
        assert_eq!(
            sample(TEXT, "concord_odd_total", &[("b", "2"), ("a", "x,y=\"z\"")]),
            Ok(1.5)
        );
        assert_eq!(sample(TEXT, "concord_odd_total", &[("b", "2")]), Ok(0.0));
        assert!(sample(TEXT, "concord_connection", &[]).is_err());
    }
}
