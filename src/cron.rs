//! Five-field cron expressions and IANA time zones (ADR 0053): parsing with messages that
//! name the offending field, and the next fire time after an instant, read in a zone.
//!
//! No cron crate: the grammar is small (`*`, lists, ranges, steps, month and day names, the
//! `@daily` family) and `jiff`, already a dependency, brings the zone database. Day-of-month
//! and day-of-week follow Vixie cron: when both are restricted, a day matching either fires.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// How far ahead a next fire is looked for; an expression that never matches within it (e.g.
/// `0 0 30 2 *`) has none.
const HORIZON_YEARS: i16 = 5;

/// A parsed expression: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

impl Cron {
    /// Parses a standard five-field expression (minute hour day-of-month month day-of-week)
    /// or a descriptor (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
    /// `@hourly`).
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err("the cron expression is empty".into());
        }
        let expanded = match expr.strip_prefix('@') {
            Some("yearly" | "annually") => "0 0 1 1 *",
            Some("monthly") => "0 0 1 * *",
            Some("weekly") => "0 0 * * 0",
            Some("daily" | "midnight") => "0 0 * * *",
            Some("hourly") => "0 * * * *",
            Some(_) => return Err(format!("unknown cron descriptor {expr:?}")),
            None => expr,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "invalid cron expression {expr:?}: expected 5 fields (minute hour day month weekday), got {}",
                fields.len()
            ));
        }
        let specs: [(&str, u32, u32, &[&str]); 5] = [
            ("minute", 0, 59, &[]),
            ("hour", 0, 23, &[]),
            ("day of month", 1, 31, &[]),
            ("month", 1, 12, MONTHS),
            ("day of week", 0, 7, DAYS),
        ];
        let mut bits = [0u64; 5];
        for (i, (field, (what, lo, hi, names))) in fields.iter().zip(specs).enumerate() {
            bits[i] = field_bits(field, lo, hi, names).map_err(|why| {
                format!("invalid cron expression {expr:?}: {what} {field:?}: {why}")
            })?;
        }
        // Sunday is 0 or 7.
        let weekdays = (bits[4] | (bits[4] >> 7)) & 0x7f;
        let star = |f: &str| f.starts_with('*') || f.starts_with('?');
        Ok(Cron {
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays: weekdays as u8,
            days_any: star(fields[2]),
            weekdays_any: star(fields[4]),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first fire strictly after `after`, read in `tz`; `None` when the expression does
    /// not match within five years. A wall time skipped by a DST change fires at the
    /// equivalent later instant; a repeated one fires once.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let limit = start.date().year().saturating_add(HORIZON_YEARS);
        // The next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        while t.year() <= limit {
            let d = t.date();
            if self.months & (1 << d.month()) == 0 {
                t = d
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(d) {
                t = d.tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = next_hour(t)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let at = tz.to_ambiguous_zoned(t).compatible().ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

fn next_hour(t: DateTime) -> Option<DateTime> {
    t.with().minute(0).build().ok()?.checked_add(1.hour()).ok()
}

fn field_bits(field: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Months are 1-based, days 0-based.
            return Ok(i as u32 + lo);
        }
        let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if !(lo..=hi).contains(&n) {
            return Err(format!("{n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(n) if n > 0 => (r, n),
                _ => return Err(format!("step {s:?} must be a positive number")),
            },
            None => (part, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else {
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if a > b {
                        return Err(format!("range {range:?} runs backwards"));
                    }
                    (a, b)
                }
                // `5/15` runs from 5 to the end of the range.
                None if step > 1 => (value(range)?, hi),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            }
        };
        for v in (a..=b).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

/// The zone named `name` (IANA, e.g. `Europe/Berlin`); `None` or empty is UTC.
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(TimeZone::UTC);
    };
    if name.len() > 64
        || name.starts_with('/')
        || name.contains("..")
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
    {
        return Err(format!("{name:?} is not an IANA time zone name"));
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

/// The next fire of `expr` in zone `tz` strictly after `after` (both validated).
pub fn next_fire(
    expr: &str,
    tz: Option<&str>,
    after: Timestamp,
) -> Result<Option<Timestamp>, String> {
    let cron = Cron::parse(expr)?;
    let tz = zone(tz)?;
    Ok(cron.next_after(after, &tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, tz: Option<&str>, after: &str) -> Option<String> {
        next_fire(expr, tz, ts(after))
            .expect("valid")
            .map(|t| t.to_string())
    }

    #[test]
    fn next_fires_of_common_expressions() {
        let at = "2026-03-04T10:17:30Z"; // a Wednesday
        for (expr, want) in [
            ("* * * * *", "2026-03-04T10:18:00Z"),
            ("*/15 * * * *", "2026-03-04T10:30:00Z"),
            ("0 9 * * *", "2026-03-05T09:00:00Z"),
            ("0 9 * * MON-FRI", "2026-03-05T09:00:00Z"),
            ("0 9 * * sat", "2026-03-07T09:00:00Z"),
            ("0 0 * * 7", "2026-03-08T00:00:00Z"),
            ("30 2 1,15 jan,jul *", "2026-07-01T02:30:00Z"),
            ("@daily", "2026-03-05T00:00:00Z"),
            ("@hourly", "2026-03-04T11:00:00Z"),
            ("5/20 * * * *", "2026-03-04T10:25:00Z"),
            // Both day fields restricted: either matches (the 15th or a Monday).
            ("0 0 15 * 1", "2026-03-09T00:00:00Z"),
            ("0 0 29 2 *", "2028-02-29T00:00:00Z"),
        ] {
            assert_eq!(next(expr, None, at).as_deref(), Some(want), "{expr}");
        }
        assert_eq!(next("0 0 30 2 *", None, at), None, "never fires");
    }

    #[test]
    fn zones_move_the_fire_and_dst_gaps_fire_once() {
        let at = "2026-01-10T12:00:00Z";
        assert_eq!(
            next("0 9 * * *", Some("Asia/Tokyo"), at).as_deref(),
            Some("2026-01-11T00:00:00Z")
        );
        assert_eq!(
            next("0 9 * * *", Some("America/New_York"), at).as_deref(),
            Some("2026-01-10T14:00:00Z")
        );
        // 02:30 does not exist in Berlin on 2026-03-29: it fires at 03:30 local (01:30Z).
        assert_eq!(
            next("30 2 * * *", Some("Europe/Berlin"), "2026-03-28T12:00:00Z").as_deref(),
            Some("2026-03-29T01:30:00Z")
        );
        // 02:30 happens twice on 2026-10-25: one fire, the next is a day later.
        let first = next("30 2 * * *", Some("Europe/Berlin"), "2026-10-24T12:00:00Z").unwrap();
        let second = next("30 2 * * *", Some("Europe/Berlin"), &first).unwrap();
        assert_eq!(first, "2026-10-25T00:30:00Z");
        assert_eq!(second, "2026-10-26T01:30:00Z");
    }

    #[test]
    fn bad_expressions_and_zones_say_why() {
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
            let e = Cron::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            zone(Some("Mars/Olympus"))
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(
            zone(Some("../etc/passwd"))
                .unwrap_err()
                .contains("not an IANA")
        );
        assert!(zone(Some("/etc/localtime")).is_err());
        assert_eq!(zone(None).unwrap(), TimeZone::UTC);
        assert!(zone(Some("Europe/Berlin")).is_ok());
    }
}
