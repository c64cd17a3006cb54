//! JSON carried inside messages without being re-encoded: [`Json`] (a payload kept as its
//! text, e.g. `data`) and [`Part`] (a field the server hands over already encoded, e.g. the
//! `event` frames inside `joined`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON value kept as its text: written verbatim when a message is encoded, and decoded
/// without parsing it into a tree (a later [`Json::parse`] does that). Borrowed when the server
/// relays a client's `data`; owned when a client decodes a server message. Two values are equal
/// when their texts are.
#[derive(Clone)]
pub struct Json<'a>(Cow<'a, RawValue>);

impl<'a> Json<'a> {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parses the text into `T` (a `serde_json::Value`, a doc op list, an application type…).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// The value as a `serde_json::Value` (`Null` if it cannot be read into one; the server
    /// only relays values that can).
    pub fn value(&self) -> serde_json::Value {
        self.parse().unwrap_or(serde_json::Value::Null)
    }

    /// Encodes `value` (e.g. a client's `data` or op list).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Json<'static>, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Json::from)
    }

    pub fn into_owned(self) -> Json<'static> {
        Json(Cow::Owned(self.0.into_owned()))
    }

    /// `null`.
    pub fn null() -> Self {
        Json(Cow::Borrowed(RawValue::NULL))
    }
}

impl<'a> From<&'a RawValue> for Json<'a> {
    fn from(raw: &'a RawValue) -> Self {
        Json(Cow::Borrowed(raw))
    }
}

impl From<Box<RawValue>> for Json<'static> {
    fn from(raw: Box<RawValue>) -> Self {
        Json(Cow::Owned(raw))
    }
}

impl std::ops::Deref for Json<'_> {
    type Target = RawValue;
    fn deref(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({})", self.get())
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Json(Cow::Owned(raw)))
    }
}

/// A field that the server may hold already encoded — the `event` frames replayed in `joined`,
/// or its `presence` and `members` measured against a byte budget — so that encoding the
/// message copies that text instead of encoding it again. Decoding always gives
/// [`Part::Value`].
#[derive(Clone, Debug, PartialEq)]
pub enum Part<'a, T> {
    /// JSON text produced by serde_json (by this crate's encoders, or `serde_json::to_string`
    /// of a `T`): written verbatim, so it must be one well-formed JSON value.
    Encoded(&'a str),
    Value(T),
}

impl<T: DeserializeOwned> Part<'_, T> {
    /// The value (parsing the text of an [`Part::Encoded`]).
    pub fn into_value(self) -> Result<T, serde_json::Error> {
        match self {
            Part::Encoded(text) => serde_json::from_str(text),
            Part::Value(v) => Ok(v),
        }
    }
}

impl<T: Default> Default for Part<'_, T> {
    fn default() -> Self {
        Part::Value(T::default())
    }
}

impl<T: Serialize> Serialize for Part<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Part::Encoded(text) => Verbatim(text).serialize(s),
            Part::Value(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Part<'_, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Part::Value)
    }
}

/// Already-encoded JSON text, written as it is.
///
/// serde_json writes a `RawValue` verbatim by recognising the struct name below (its
/// `raw_value` feature: the name is how `RawValue` itself serializes). A `RawValue` can only be
/// made from a `&str` by parsing it again (or with `unsafe`), which for the catch-up of a
/// `joined` costs ten times more than copying it; hence this. If serde_json ever stopped
/// recognising the name, the text would come out wrapped in an object: the tests of this crate
/// compare whole encoded frames and would fail.
struct Verbatim<'a>(&'a str);

const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl Serialize for Verbatim<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut raw = s.serialize_struct(RAW_VALUE_TOKEN, 1)?;
        raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
        raw.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encoded_parts_are_written_verbatim() {
        let parts: Vec<Part<serde_json::Value>> = vec![
            Part::Encoded(r#"{"b":1,"a":[true,null]}"#),
            Part::Value(json!({"b": 2})),
        ];
        let text = serde_json::to_string(&parts).unwrap();
        assert_eq!(text, r#"[{"b":1,"a":[true,null]},{"b":2}]"#);
        let back: Vec<Part<serde_json::Value>> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            vec![
                Part::Value(json!({"b": 1, "a": [true, null]})),
                Part::Value(json!({"b": 2}))
            ]
        );
        assert_eq!(
            Part::<serde_json::Value>::Encoded("[1]")
                .into_value()
                .unwrap(),
            json!([1])
        );
    }

    #[test]
    fn json_keeps_its_text() {
        let text = r#"{"z":1,  "a":"é"}"#;
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        let j = Json::from(&*raw);
        assert_eq!(serde_json::to_string(&j).unwrap(), text);
        let back: Json<'static> = serde_json::from_str(&format!("[{text}]"))
            .map(|v: Vec<Json>| v.into_iter().next().unwrap())
            .unwrap();
        assert_eq!(back, j);
        assert_eq!(back.value(), json!({"a": "é", "z": 1}));
        assert_eq!(Json::encode(&json!([1, 2])).unwrap().get(), "[1,2]");
        assert_eq!(Json::null().get(), "null");
    }
}
