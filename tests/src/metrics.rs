//! Reading Prometheus text exposition (`/stats/prometheus`).

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text document (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{').filter(|&open| !line[..open].contains(' ')) {
        Some(open) => {
            let (labels, close) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + close + 1..])
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// Parses `k="v",k2="v2"}`; returns the labels and the index of `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let mut labels = BTreeMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            return Some((labels, i));
        }
        let eq = i + s[i..].find('=')?;
        let key = s[i..eq].to_owned();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut value = String::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                value.push(match bytes[i] {
                    b'n' => '\n',
                    c => c as char,
                });
            } else {
                value.push(bytes[i] as char);
            }
            i += 1;
        }
        i += 1;
        labels.insert(key, value);
    }
}

/// The sum of every sample named `name` whose labels include all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))).map(|s| s.value).sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_sums() {
        let text = "# TYPE x counter\nx{cluster_name=\"a\",k=\"q\\\"uote\"} 2\nx{cluster_name=\"b\"} 3\ny 7\n# EOF\n";
        let s = super::parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(super::sum(&s, "x", &[]), 5.0);
        assert_eq!(super::sum(&s, "x", &[("cluster_name", "a")]), 2.0);
        assert_eq!(s[0].labels["k"], "q\"uote");
        assert_eq!(super::sum(&s, "y", &[]), 7.0);
    }
}
