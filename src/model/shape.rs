//! A structure is read only from a JSON object (or a TOML table).
//!
//! serde's derived structures also read one from an array of its members in order: a whole
//! GetDashboardEmbedUrl body as `["111122223333","d","ANONYMOUS"]`, `"QuickChat": []`, a session
//! tag as `["k","v"]`, a config's `pool = [5]` as `pool.min_remaining_secs = 5`. QuickSight
//! refuses those, and so must every reader of a request or a config here. What was parsed is
//! compared with what it was parsed into, written back as JSON: wherever that has an object, the
//! input must have one. A body with no array in it is not read again; one with arrays is walked
//! once, keeping only where its objects and arrays stand (by the hash of their member paths), and
//! only a suspect one is walked again keeping the paths' names, to name the member.
//! `cargo bench --bench micro -- "request parse"`: an anonymous request's body with three
//! session tags parses in 4.7 µs with the check, 1.7 µs without it (7.8 µs when both sides were
//! read as `serde_json::Value`s); a body is parsed once and its admission remembered, so a pool
//! hit does not pay it again.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::BadInput;

/// A JSON walker's visits of scalars, which it passes over.
macro_rules! scalars_say_nothing {
    () => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// A member (or the body) that must be a JSON object and is not.
pub(super) fn not_an_object(field: Option<String>) -> BadInput {
    match field {
        Some(field) => BadInput {
            code: "invalid_type",
            detail: format!("{field} must be a JSON object"),
            field: Some(field),
        },
        None => BadInput {
            code: "invalid_json",
            detail: "the body must be a JSON object".into(),
            field: None,
        },
    }
}

/// Refuses `body` if it has a JSON array where `parsed`, what it was parsed into, has a
/// structure. A body without an array is not read again.
///
/// # Errors
/// The first member (or the body) that is an array where `parsed` has a structure.
pub(crate) fn objects_in_place<T: serde::Serialize>(
    body: &[u8],
    parsed: &T,
) -> Result<(), BadInput> {
    if !body.contains(&b'[') {
        return Ok(());
    }
    let input = || serde_json::Deserializer::from_slice(body);
    check(|named| containers(&mut input(), named), parsed)
}

/// [`objects_in_place`] for a body read as a JSON value.
///
/// # Errors
/// See [`objects_in_place`].
pub(crate) fn objects_in_place_value<T: serde::Serialize>(
    value: &serde_json::Value,
    parsed: &T,
) -> Result<(), BadInput> {
    check(|named| containers(value, named), parsed)
}

/// Where reading `input` as a `T` failed inside an array that stands where `T` has a structure:
/// that member (`Some(None)`: the body itself), the outermost such. serde then reports a problem
/// with a member `[1]` the client never named, or with a member of the structure the array's
/// items were taken for (`ExperienceConfiguration[0].InitialDashboardId is required`). Whether
/// `T` has a structure or a list there is asked of `T` itself: with an empty object in the
/// array's place, a list is refused right there as a map; a structure is not. Only a failed
/// reading comes here.
pub(crate) fn array_read_as_structure<T: serde::de::DeserializeOwned>(
    input: &serde_json::Value,
    failed_at: &serde_path_to_error::Path,
) -> Option<Option<String>> {
    use serde_path_to_error::Segment;
    let mut node = input;
    let mut at: Vec<&Segment> = Vec::new();
    for segment in failed_at {
        match (segment, node) {
            (Segment::Seq { index }, serde_json::Value::Array(items)) => {
                if !list_at::<T>(input, &at) {
                    let name = member_name(&at);
                    return Some((!name.is_empty()).then_some(name));
                }
                node = items.get(*index)?;
            }
            (Segment::Map { key }, serde_json::Value::Object(members)) => {
                node = members.get(key)?;
            }
            _ => return None,
        }
        at.push(segment);
    }
    None
}

/// Whether `T` reads a list at `at` in `input` (asked with an empty object there).
fn list_at<T: serde::de::DeserializeOwned>(
    input: &serde_json::Value,
    at: &[&serde_path_to_error::Segment],
) -> bool {
    use serde_path_to_error::Segment;
    let mut probe = input.clone();
    let mut node = &mut probe;
    for segment in at {
        node = match (segment, node) {
            (Segment::Seq { index }, serde_json::Value::Array(items)) => &mut items[*index],
            (Segment::Map { key }, serde_json::Value::Object(members)) => &mut members[key],
            _ => return false,
        };
    }
    *node = serde_json::Value::Object(serde_json::Map::new());
    match serde_path_to_error::deserialize::<_, T>(probe) {
        Ok(_) => false,
        Err(e) => {
            member_name(&e.path().iter().collect::<Vec<_>>()) == member_name(at)
                && e.inner().to_string().starts_with("invalid type: map")
        }
    }
}

/// `A.B[2].C` for a path's segments (empty for the whole body).
fn member_name(at: &[&serde_path_to_error::Segment]) -> String {
    // As serde_path_to_error writes a whole path (each segment's own text, `.` before a member),
    // which has no way to write a part of one.
    let mut name = String::new();
    for segment in at {
        if !name.is_empty() && !matches!(segment, serde_path_to_error::Segment::Seq { .. }) {
            name.push('.');
        }
        name.push_str(&segment.to_string());
    }
    name
}

/// Where the input (walked by `input`, keeping names or not) has an array and `parsed` an
/// object: first by the hashes of their paths, and only if some match, by their names (which
/// also settles a collision of hashes).
fn check<T: serde::Serialize>(
    input: impl Fn(bool) -> Result<Vec<Container>, serde_json::Error>,
    parsed: &T,
) -> Result<(), BadInput> {
    let unreadable = |_| not_an_object(None);
    let written = serde_json::to_vec(parsed).map_err(unreadable)?;
    let model = |named| containers(&mut serde_json::Deserializer::from_slice(&written), named);
    let misplaced = |input: &[Container], model: &[Container]| {
        input
            .iter()
            .find(|c| {
                c.array
                    && model
                        .iter()
                        .any(|m| !m.array && m.path == c.path && m.name == c.name)
            })
            .map(|c| c.name.clone())
    };
    let (input_hashes, model_hashes) = (input(false).map_err(unreadable)?, model(false));
    if misplaced(&input_hashes, &model_hashes.map_err(unreadable)?).is_none() {
        return Ok(());
    }
    match misplaced(
        &input(true).map_err(unreadable)?,
        &model(true).map_err(unreadable)?,
    ) {
        Some(name) => Err(not_an_object(name.filter(|n| !n.is_empty()))),
        None => Ok(()),
    }
}

/// An object or an array in a JSON value: the hash of its member path, whether it is an array,
/// and, when asked for, the path itself (`A.B[2].C`; empty for the whole value).
struct Container {
    path: u64,
    array: bool,
    name: Option<String>,
}

/// Every object and array in the JSON value `d` reads, with their paths' names if `named`.
fn containers<'de, D: Deserializer<'de>>(d: D, named: bool) -> Result<Vec<Container>, D::Error> {
    let mut out = Vec::with_capacity(16);
    Walker {
        out: &mut out,
        path: FNV_OFFSET,
        name: named.then(String::new),
    }
    .deserialize(d)?;
    Ok(out)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Records every object and array of a JSON value (see [`Container`]).
struct Walker<'o> {
    out: &'o mut Vec<Container>,
    path: u64,
    name: Option<String>,
}

impl Walker<'_> {
    fn record(&mut self, array: bool) {
        self.out.push(Container {
            path: self.path,
            array,
            name: self.name.clone(),
        });
    }
}

impl<'de> DeserializeSeed<'de> for Walker<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walker<'_> {
    type Value = ();

    scalars_say_nothing!();
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.record(true);
        for i in 0u64.. {
            let item = Walker {
                out: &mut *self.out,
                path: fnv(fnv(self.path, b"["), &i.to_le_bytes()),
                name: self.name.as_ref().map(|n| format!("{n}[{i}]")),
            };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.record(false);
        let member = MemberOf {
            path: fnv(self.path, b"."),
            name: self.name.as_deref(),
        };
        while let Some((path, name)) = map.next_key_seed(member)? {
            map.next_value_seed(Walker {
                out: &mut *self.out,
                path,
                name,
            })?;
        }
        Ok(())
    }
}

/// A member's path from its parent's: the hash, and the name if the parent's is kept.
#[derive(Clone, Copy)]
struct MemberOf<'n> {
    path: u64,
    name: Option<&'n str>,
}

impl<'de> DeserializeSeed<'de> for MemberOf<'_> {
    type Value = (u64, Option<String>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for MemberOf<'_> {
    type Value = (u64, Option<String>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        let name = self.name.map(|parent| match parent {
            "" => s.to_string(),
            parent => format!("{parent}.{s}"),
        });
        Ok((fnv(self.path, s.as_bytes()), name))
    }
}

/// The first member given twice in one object of the JSON `body`, as its path
/// (`Requests[2].DashboardId`). serde's derived structures refuse a repeated member, but a
/// `serde_json::Value` keeps the last one silently: a body read as a value (hints) is checked
/// with this first.
///
/// # Errors
/// `body` is not JSON.
pub(crate) fn repeated_member(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    let mut found = None;
    Repeats {
        at: String::new(),
        found: &mut found,
    }
    .deserialize(&mut serde_json::Deserializer::from_slice(body))?;
    Ok(found)
}

/// Looks for a repeated member below `at`, keeping the first in `found`.
struct Repeats<'f> {
    at: String,
    found: &'f mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Repeats<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Repeats<'_> {
    type Value = ();

    scalars_say_nothing!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0usize.. {
            let item = Repeats {
                at: format!("{}[{i}]", self.at),
                found: &mut *self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let at = if self.at.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", self.at)
            };
            if seen.contains(&name) && self.found.is_none() {
                *self.found = Some(at.clone());
            }
            seen.push(name);
            map.next_value_seed(Repeats {
                at,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}
