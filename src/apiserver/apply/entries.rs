//! `metadata.managedFields` entries: parsing, per-manager edits and writing them back.

use super::*;

/// A `managedFields` entry. Entries that are not modified are re-emitted verbatim.
pub(super) struct Entry {
    pub(super) raw: Value,
    pub(super) manager: String,
    pub(super) operation: String,
    pub(super) subresource: Option<String>,
    pub(super) fields: BTreeSet<FieldPath>,
    pub(super) dirty: bool,
}

impl Entry {
    pub(super) fn parse(raw: &Value) -> Entry {
        let text = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or_default();
        let subresource = Some(text("subresource"))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Entry {
            manager: text("manager").to_owned(),
            operation: text("operation").to_owned(),
            subresource,
            fields: raw
                .get("fieldsV1")
                .map(paths_from_fields_v1)
                .unwrap_or_default(),
            raw: raw.clone(),
            dirty: false,
        }
    }

    pub(super) fn new(manager: &str, operation: &str, subresource: Option<&str>) -> Entry {
        let mut raw = Map::new();
        raw.insert("manager".into(), manager.into());
        raw.insert("operation".into(), operation.into());
        if let Some(s) = subresource {
            raw.insert("subresource".into(), s.into());
        }
        Entry {
            raw: Value::Object(raw),
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            subresource: subresource.map(str::to_owned),
            fields: BTreeSet::new(),
            dirty: true,
        }
    }

    pub(super) fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    /// Replace the field set; `time` and `apiVersion` change only if the set changes.
    pub(super) fn set_fields(
        &mut self,
        fields: BTreeSet<FieldPath>,
        api_version: Option<&str>,
        now: &str,
    ) {
        if fields == self.fields && !self.dirty {
            return;
        }
        self.fields = fields;
        self.dirty = true;
        if !self.raw.is_object() {
            self.raw = Value::Object(Map::new());
        }
        if let Value::Object(m) = &mut self.raw {
            if let Some(v) = api_version {
                m.insert("apiVersion".into(), v.into());
            }
            m.insert("time".into(), now.into());
        }
    }

    pub(super) fn remove_where(&mut self, pred: impl Fn(&FieldPath) -> bool) {
        let before = self.fields.len();
        self.fields.retain(|p| !pred(p));
        if self.fields.len() != before {
            self.dirty = true;
        }
    }

    /// The JSON entry, or `None` when a modified entry was left with no fields.
    pub(super) fn emit(mut self) -> Option<Value> {
        if !self.dirty {
            return Some(self.raw);
        }
        if self.fields.is_empty() {
            return None;
        }
        if let Value::Object(m) = &mut self.raw {
            m.insert("fieldsType".into(), "FieldsV1".into());
            m.insert("fieldsV1".into(), fields_v1_from_paths(&self.fields));
        }
        Some(self.raw)
    }
}

pub(super) fn parse_entries(managed_fields: Option<&Value>) -> Vec<Entry> {
    match managed_fields {
        Some(Value::Array(items)) => items.iter().map(Entry::parse).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn managed_fields_of(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

pub(super) fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let items: Vec<Value> = entries.into_iter().filter_map(Entry::emit).collect();
    let Value::Object(root) = obj else {
        return;
    };
    if items.is_empty() {
        if let Some(Value::Object(md)) = root.get_mut("metadata") {
            md.remove("managedFields");
        }
        return;
    }
    let md = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(md) = md {
        md.insert("managedFields".into(), Value::Array(items));
    }
}

pub(super) fn api_version_of(v: &Value) -> Option<&str> {
    v.get("apiVersion").and_then(Value::as_str)
}
