//! Rules of `spec.schedules` on a Workspace that a structural schema cannot say (ADR 0053):
//! each `cronExpr` parses, each `timezone` is a known IANA zone, names are unique.

use serde_json::Value;

use super::{Cause, REASON_INVALID};

/// The Duplicate reason of `field.Duplicate`.
pub const REASON_DUPLICATE: &str = "FieldValueDuplicate";

/// The causes of a Workspace object's `spec.schedules`, each naming its field
/// (`spec.schedules[1].cronExpr`).
pub fn workspace_schedules(obj: &Value) -> Vec<Cause> {
    let Some(list) = obj.pointer("/spec/schedules").and_then(Value::as_array) else {
        return vec![];
    };
    let mut out = vec![];
    let mut seen: Vec<&str> = vec![];
    for (i, s) in list.iter().enumerate() {
        let field = |f: &str| format!("spec.schedules[{i}].{f}");
        if let Some(expr) = s.get("cronExpr").and_then(Value::as_str)
            && let Err(why) = crate::cron::Cron::parse(expr)
        {
            out.push(Cause {
                field: field("cronExpr"),
                message: format!("Invalid value: {}: {why}", Value::from(expr)),
                reason: REASON_INVALID,
            });
        }
        if let Some(tz) = s.get("timezone").and_then(Value::as_str)
            && let Err(why) = crate::cron::zone(Some(tz))
        {
            out.push(Cause {
                field: field("timezone"),
                message: format!("Invalid value: {}: {why}", Value::from(tz)),
                reason: REASON_INVALID,
            });
        }
        if let Some(name) = s.get("name").and_then(Value::as_str) {
            if seen.contains(&name) {
                out.push(Cause {
                    field: field("name"),
                    message: format!("Duplicate value: {}", Value::from(name)),
                    reason: REASON_DUPLICATE,
                });
            }
            seen.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_cron_unknown_zone_and_duplicate_name_each_name_their_field() {
        let obj = json!({"spec": {"schedules": [
            {"name": "a", "cronExpr": "0 9 * * *", "timezone": "Europe/Berlin", "prompt": "p"},
            {"name": "b", "cronExpr": "61 * * * *", "prompt": "p"},
            {"name": "a", "cronExpr": "@daily", "timezone": "Mars/Base", "prompt": "p"},
        ]}});
        let causes = workspace_schedules(&obj);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.schedules[1].cronExpr",
                "spec.schedules[2].timezone",
                "spec.schedules[2].name"
            ]
        );
        assert!(
            causes[0].message.contains("61 is outside 0-59"),
            "{}",
            causes[0].message
        );
        assert!(causes[1].message.contains("unknown time zone"));
        assert_eq!(causes[2].reason, REASON_DUPLICATE);
        assert!(workspace_schedules(&json!({"spec": {}})).is_empty());
    }
}
