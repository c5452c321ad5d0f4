//! OpenMetrics text (what prometheus-client writes) turned into the classic Prometheus text
//! format 0.0.4, which every scraper and `promtool check metrics` read.
//!
//! The two formats differ in a few places, all handled here line by line:
//!
//! - a counter family `x` has samples `x_total` (and maybe `x_created`): in 0.0.4 the family
//!   is named `x_total` in `# HELP`/`# TYPE`, and `_created` samples are dropped;
//! - `info` is not a 0.0.4 type: family `x` becomes the gauge `x_info`;
//! - `unknown` is `untyped`; `stateset` becomes a gauge; `gaugehistogram` becomes a
//!   histogram (`_gcount`/`_gsum` samples renamed `_count`/`_sum`);
//! - `# UNIT` and `# EOF` have no 0.0.4 equivalent and are dropped;
//! - `# HELP` escapes only `\\` and `\n` (an OpenMetrics `\"` becomes `"`);
//! - exemplars (`# {...} value`) are dropped, and so are sample timestamps (seconds in
//!   OpenMetrics, milliseconds in 0.0.4);
//! - samples are left as they are otherwise: label values escape `\\`, `\"` and `\n` in
//!   both formats, and `+Inf`, `-Inf` and `NaN` are spelt alike.

/// Content type of the classic text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Info,
    GaugeHistogram,
    Other,
}

struct Family<'a> {
    name: &'a str,
    kind: Kind,
}

/// Converts an OpenMetrics exposition into the classic text format.
pub fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, String)> = None;
    let mut family: Option<Family<'_>> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (kind, classic_name, classic_type) = match ty {
                "counter" => (Kind::Counter, format!("{name}_total"), "counter"),
                "info" => (Kind::Info, format!("{name}_info"), "gauge"),
                "gauge" | "stateset" => (Kind::Other, name.to_string(), "gauge"),
                "histogram" => (Kind::Other, name.to_string(), "histogram"),
                "gaugehistogram" => (Kind::GaugeHistogram, name.to_string(), "histogram"),
                "summary" => (Kind::Other, name.to_string(), "summary"),
                _ => (Kind::Other, name.to_string(), "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                if help_name == name {
                    out.push_str(&format!("# HELP {classic_name} {text}\n"));
                }
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_type}\n"));
            family = Some(Family { name, kind });
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT`, `# EOF` and other comments.
        } else {
            let (series, value) = split_sample(line);
            let name_end = series.find('{').unwrap_or(series.len());
            let (name, labels) = series.split_at(name_end);
            let renamed = match &family {
                Some(f) if name.starts_with(f.name) => {
                    let suffix = &name[f.name.len()..];
                    match (f.kind, suffix) {
                        (_, "_created") => continue,
                        (Kind::GaugeHistogram, "_gcount") => Some(format!("{}_count", f.name)),
                        (Kind::GaugeHistogram, "_gsum") => Some(format!("{}_sum", f.name)),
                        _ => None,
                    }
                }
                _ => None,
            };
            out.push_str(renamed.as_deref().unwrap_or(name));
            out.push_str(labels);
            out.push(' ');
            out.push_str(value);
            out.push('\n');
        }
    }
    out
}

/// Splits a sample line into its series (name and labels) and its value, leaving out
/// the timestamp and exemplar that may follow. Label values may hold spaces, `}` and
/// escaped quotes.
fn split_sample(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut in_labels = false;
    let mut in_quotes = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' if in_labels => in_quotes = !in_quotes,
            b'{' if !in_quotes => in_labels = true,
            b'}' if !in_quotes => in_labels = false,
            b' ' if !in_labels => break,
            _ => {}
        }
        i += 1;
    }
    let series = &line[..i.min(line.len())];
    let value = line
        .get(i..)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("");
    (series, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_lose_created_units_and_eof() {
        let om = "# HELP app_requests Requests.\n\
                  # TYPE app_requests counter\n\
                  app_requests_total{code=\"200\"} 3\n\
                  app_requests_created{code=\"200\"} 1700000000.0\n\
                  # HELP app_wait_seconds Waits.\n\
                  # TYPE app_wait_seconds counter\n\
                  # UNIT app_wait_seconds seconds\n\
                  app_wait_seconds_total 1.5\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP app_requests_total Requests.\n\
             # TYPE app_requests_total counter\n\
             app_requests_total{code=\"200\"} 3\n\
             # HELP app_wait_seconds_total Waits.\n\
             # TYPE app_wait_seconds_total counter\n\
             app_wait_seconds_total 1.5\n"
        );
    }

    #[test]
    fn info_becomes_a_gauge_and_unknown_becomes_untyped() {
        let om = "# HELP app_build App \\\"version\\\".\n\
                  # TYPE app_build info\n\
                  app_build_info{version=\"1.0\"} 1\n\
                  # HELP app_thing Thing.\n\
                  # TYPE app_thing unknown\n\
                  app_thing 7\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP app_build_info App \"version\".\n\
             # TYPE app_build_info gauge\n\
             app_build_info{version=\"1.0\"} 1\n\
             # HELP app_thing Thing.\n\
             # TYPE app_thing untyped\n\
             app_thing 7\n"
        );
    }

    #[test]
    fn histograms_gauges_and_escaped_labels_pass_through() {
        let om = "# HELP app_d Duration.\n\
                  # TYPE app_d_seconds histogram\n\
                  app_d_seconds_sum 0.5\n\
                  app_d_seconds_count 2\n\
                  app_d_seconds_bucket{le=\"0.1\"} 1\n\
                  app_d_seconds_bucket{le=\"+Inf\"} 2\n\
                  # TYPE app_g gauge\n\
                  app_g{name=\"a \\\"b} c\\\\\",x=\"\\n\"} -Inf\n\
                  # EOF\n";
        let classic = from_openmetrics(om);
        assert!(
            classic.starts_with("# TYPE app_d_seconds histogram\napp_d_seconds_sum 0.5\n"),
            "a HELP of another name is dropped: {classic}"
        );
        assert!(classic.contains("app_d_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(classic
            .ends_with("# TYPE app_g gauge\napp_g{name=\"a \\\"b} c\\\\\",x=\"\\n\"} -Inf\n"));
    }

    #[test]
    fn timestamps_exemplars_and_gauge_histogram_counts_are_rewritten() {
        let om = "# TYPE app_c counter\n\
                  app_c_total{a=\"x y\"} 4 1700000000.5 # {trace_id=\"k\"} 1 1700000000\n\
                  # TYPE app_q gaugehistogram\n\
                  app_q_bucket{le=\"+Inf\"} 2\n\
                  app_q_gcount 2\n\
                  app_q_gsum 9\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# TYPE app_c_total counter\n\
             app_c_total{a=\"x y\"} 4\n\
             # TYPE app_q histogram\n\
             app_q_bucket{le=\"+Inf\"} 2\n\
             app_q_count 2\n\
             app_q_sum 9\n"
        );
    }
}
