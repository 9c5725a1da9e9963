//! Name rules (k8s.io/apimachinery/pkg/util/validation) with their apimachinery messages, and
//! the regexes behind them and behind the `date`, `date-time` and `pattern` checks.

use super::*;

pub(super) const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
pub(super) const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
pub(super) const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
pub(super) const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

pub(super) const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
pub(super) const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
pub(super) const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
pub(super) const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

pub(super) fn anchored(fmt: &str) -> Regex {
    Regex::new(&format!("^(?:{fmt})$")).expect("built-in regex must compile")
}

pub(super) static DNS1123_LABEL_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_LABEL_FMT));
pub(super) static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
pub(super) static QUALIFIED_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored(QUALIFIED_NAME_FMT));
pub(super) static LABEL_VALUE_RE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_VALUE_FMT));
/// Loose RFC 3339 / ISO 8601 date-time (what go-openapi strfmt accepts, roughly).
pub(super) static DATE_TIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    anchored(
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]+)?)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?",
    )
});
pub(super) static DATE_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored("[0-9]{4}-[0-9]{2}-[0-9]{2}"));

/// Compiled schema `pattern`s; `None` caches a pattern that does not compile (it is ignored).
pub(super) static PATTERN_CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
pub(super) const PATTERN_CACHE_LIMIT: usize = 1024;

/// `Some(matches)` or `None` when the pattern is not a valid (Rust) regex.
pub(super) fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    let re = {
        let mut cache = PATTERN_CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(pattern) {
            Some(cached) => cached.clone(),
            None => {
                if cache.len() >= PATTERN_CACHE_LIMIT {
                    cache.clear();
                }
                let compiled = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .ok();
                cache.insert(pattern.to_owned(), compiled.clone());
                compiled
            }
        }
    };
    re.map(|r| r.is_match(s))
}

// ---------------------------------------------------------------------------
// Name rules (k8s.io/apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------

pub(super) fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// apimachinery `RegexError`, including its quirky "',  or '" spacing.
pub(super) fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, ex) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(ex);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// All DNS-1123 subdomain violations of `name` (empty = valid).
pub fn dns1123_subdomain_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !DNS1123_SUBDOMAIN_RE.is_match(name) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// All DNS-1123 label violations of `name` (empty = valid).
pub fn dns1123_label_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !DNS1123_LABEL_RE.is_match(name) {
        errs.push(regex_error(
            DNS1123_LABEL_ERR,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// All qualified-name violations (label keys, annotation keys, finalizers); empty = valid.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let examples = ["MyName", "my.name", "123-abc"];
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &examples)
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !QUALIFIED_NAME_RE.is_match(name) {
        errs.push(format!(
            "name part {}",
            regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &examples)
        ));
    }
    errs
}

/// All label-value violations (empty = valid).
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !LABEL_VALUE_RE.is_match(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

pub(super) fn join_errors(errs: Vec<String>) -> Option<String> {
    if errs.is_empty() {
        None
    } else {
        Some(errs.join("; "))
    }
}

/// `None` if `name` is a valid DNS-1123 subdomain, otherwise the Kubernetes message(s) joined by "; ".
pub fn validate_dns1123_subdomain(name: &str) -> Option<String> {
    join_errors(dns1123_subdomain_errors(name))
}

/// `None` if `name` is a valid DNS-1123 label, otherwise the Kubernetes message(s) joined by "; ".
pub fn validate_dns1123_label(name: &str) -> Option<String> {
    join_errors(dns1123_label_errors(name))
}
