//! YAML on serde-saphyr (ADR 0046), read the way serde_yaml read it before: the YAML 1.2
//! core schema (`yes` and `0755` stay strings), `<<` an ordinary key, `.inf` a float, and
//! one-line errors that end with `at line L, column C`. Every reader of YAML goes through
//! here, so the choices are made once.

use serde::Serialize;
use serde::de::Deserialize;

pub use serde_saphyr::{Error, Location, SerializeError, Spanned, Tagged};

/// The options every read uses.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        with_snippet: false,
    }
}

/// One YAML document from text.
pub fn from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// One YAML document from bytes (which must be UTF-8).
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    serde_saphyr::from_slice_with_options(bytes, options())
}

/// Every document of a `---`-separated stream (empty documents are skipped).
pub fn from_str_multiple<'de, T: Deserialize<'de>>(text: &'de str) -> Result<Vec<T>, Error> {
    serde_saphyr::from_str_multiple_with_options(text, options())
}

/// A value as block-style YAML.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, SerializeError> {
    serde_saphyr::to_string(value)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    #[test]
    fn reads_the_yaml_1_2_core_schema() {
        let v: Value = super::from_str(
            "a: yes\nb: 0755\nc: 1_000\nd: true\ne: 0x10\nf: ~\ng: '3'\n1: one\n<<: {h: 1}\n",
        )
        .expect("yaml");
        assert_eq!(
            v,
            json!({"a": "yes", "b": "0755", "c": "1_000", "d": true, "e": 16, "f": null,
                   "g": "3", "1": "one", "<<": {"h": 1}})
        );
    }

    #[test]
    fn errors_are_one_line_with_the_position() {
        let e = super::from_str::<Value>("a: [\n").expect_err("bad");
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("line 1, column 4"), "{text}");
    }

    #[test]
    fn streams_and_round_trips() {
        let docs: Vec<Value> = super::from_str_multiple("a: 1\n---\nb: [x]\n").expect("yaml");
        assert_eq!(docs, [json!({"a": 1}), json!({"b": ["x"]})]);
        let text = super::to_string(&docs[1]).expect("yaml");
        assert_eq!(super::from_str::<Value>(&text).expect("back"), docs[1]);
    }
}
