//! A workspace's `schedules:` (ADR 0047): `[{name, cron_expr, timezone, prompt | prompt_file,
//! enabled}]`. A value of the wrong type fails the template (with its file and line); an
//! invalid cron expression, an empty prompt or a repeated name skips that schedule, reported,
//! as the original does. The prompt file is read by the plan (relative to the workspace's
//! files_dir).

use super::node::{Kind, Node};
use super::schema::{Loc, Prompt};
use super::{ErrorKind, TemplateError};
use crate::resources::ScheduleSpec;

/// One schedule as written, its prompt not yet read.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub loc: Loc,
    pub name: String,
    pub cron_expr: String,
    pub timezone: Option<String>,
    pub prompt: Option<Prompt>,
    pub enabled: bool,
}

fn text(v: &Node, max: usize, what: &str) -> Result<String, TemplateError> {
    let s = v.string()?;
    if s.len() > max
        || s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(v.invalid(format!(
            "{what} must be text of at most {max} bytes without control characters"
        )));
    }
    Ok(s.trim().to_string())
}

/// Reads the entries; a missing name becomes `schedule-<n>` (1-based).
pub(crate) fn parse(items: &[Node]) -> Result<Vec<Draft>, TemplateError> {
    let mut out = vec![];
    for (i, item) in items.iter().enumerate() {
        let mut d = Draft {
            loc: Loc::of(item),
            name: String::new(),
            cron_expr: String::new(),
            timezone: None,
            prompt: None,
            enabled: true,
        };
        let mut file = None;
        for (k, v) in item.map()? {
            match k.as_str() {
                "name" => d.name = text(v, 128, "name")?,
                "cron_expr" | "cron" => d.cron_expr = text(v, 200, "cron_expr")?,
                "timezone" => d.timezone = Some(text(v, 64, "timezone")?).filter(|t| !t.is_empty()),
                "prompt" => {
                    let t = text(v, 64 * 1024, "prompt")?;
                    if !t.is_empty() {
                        d.prompt = Some(Prompt::Text(t));
                    }
                }
                "prompt_file" => file = Some((text(v, 512, "prompt_file")?, Loc::of(v))),
                "enabled" => d.enabled = matches!(v.kind, Kind::Null) || v.bool()?,
                other => {
                    return Err(v.invalid(format!(
                        "unknown key {other:?} in a schedule (name, cron_expr, timezone, prompt, prompt_file, enabled)"
                    )));
                }
            }
        }
        if d.prompt.is_none()
            && let Some((f, loc)) = file.filter(|(f, _)| !f.is_empty())
        {
            d.prompt = Some(Prompt::File(f, loc));
        }
        if d.name.is_empty() {
            d.name = format!("schedule-{}", i + 1);
        }
        if let Some(tz) = &d.timezone
            && !tz
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        {
            return Err(item.err(
                ErrorKind::Invalid,
                format!("timezone {tz:?} is not an IANA zone name"),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// The schedules to carry and the messages of those skipped. `prompts[i]` is the text of
/// `drafts[i]`'s prompt (read by the plan).
pub(crate) fn finish(
    drafts: Vec<Draft>,
    prompts: Vec<Option<String>>,
) -> (Vec<ScheduleSpec>, Vec<String>) {
    let mut out: Vec<ScheduleSpec> = vec![];
    let mut skipped = vec![];
    for (d, prompt) in drafts.into_iter().zip(prompts) {
        let skip = |why: String| format!("{}: schedule {:?} skipped: {why}", d.loc.place(), d.name);
        if let Err(why) = check_cron(&d.cron_expr) {
            skipped.push(skip(why));
            continue;
        }
        // The API server refuses an unknown zone or a name with '/' (ADR 0053): skipped here,
        // so the workspace itself is still created.
        if let Err(why) = crate::cron::zone(d.timezone.as_deref()) {
            skipped.push(skip(why));
            continue;
        }
        if d.name.contains('/') {
            skipped.push(skip("its name contains '/'".into()));
            continue;
        }
        let Some(prompt) = prompt.filter(|p| !p.trim().is_empty()) else {
            skipped.push(skip("its prompt is empty".into()));
            continue;
        };
        if out.iter().any(|s| s.name == d.name) {
            skipped.push(skip(
                "another schedule of this workspace has the same name".into(),
            ));
            continue;
        }
        out.push(ScheduleSpec {
            name: d.name,
            cron_expr: d.cron_expr,
            timezone: d.timezone,
            prompt,
            enabled: d.enabled,
        });
    }
    (out, skipped)
}

/// A standard five-field cron expression (minute hour day-of-month month day-of-week, with
/// `*`, lists, ranges, steps and month/day names) or a descriptor such as `@daily`
/// ([`crate::cron`], ADR 0053).
pub fn check_cron(expr: &str) -> Result<(), String> {
    crate::cron::Cron::parse(expr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_are_checked_field_by_field() {
        for ok in [
            "0 9 * * *",
            "*/15 * * * *",
            "0 9-17 * * MON-FRI",
            "30 2 1,15 jan,jul 0",
            "0 0 * * 7",
            "@daily",
        ] {
            assert_eq!(check_cron(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("0 9 * *", "expected 5 fields"),
            ("60 * * * *", "minute \"60\": 60 is outside 0-59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * foo *", "\"foo\" is not a number"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("@sometimes", "unknown cron descriptor"),
        ] {
            let e = check_cron(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
