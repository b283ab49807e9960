//! proto3 JSON (and YAML) for the Envoy API: decode a document into the `envoy-types`
//! prost structs, and encode those structs back to JSON for `/config_dump`.
//!
//! It owns the descriptor pool (the Envoy v3 API compiled at build time, see
//! `build.rs`) and the one thing plain proto3 JSON cannot do with istiod's output:
//! `Any` payloads whose type is not an Envoy proto (Istio's `stats.PluginConfig`,
//! `istio.envoy.config.filter.http.alpn…`, `envoy.tcp.metadataexchange…`). Those are
//! kept *opaque*: the type URL survives, the payload is dropped, and the decode reports
//! each one by path so the translator can say precisely what it skipped.
//!
//! It does not know what a listener or a route means; that is `istio-compat`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions};
use serde_json::{Map, Value};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor_set.bin"));

/// The descriptor pool, built on first use. Placeholder messages for opaque `Any`
/// types are added to it as they are met, so it sits behind a lock; readers clone
/// the (cheap, shared) pool. It takes ~17 MB, so the runtime [`release`]s it once a
/// configuration is loaded, and an xDS client when it sits idle ([`release_if_idle`]);
/// the next use builds it again.
static POOL: RwLock<Option<DescriptorPool>> = RwLock::new(None);

fn build_pool() -> DescriptorPool {
    // The set was linked once already in build.rs; failing here means the binary is corrupt.
    DescriptorPool::decode(DESCRIPTOR_SET).unwrap_or_else(|e| panic!("embedded Envoy descriptor set is corrupt: {e}"))
}

fn write_pool() -> std::sync::RwLockWriteGuard<'static, Option<DescriptorPool>> {
    let mut guard = POOL.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.is_none() {
        *guard = Some(build_pool());
    }
    guard
}

/// When the pool was last handed out, in milliseconds since [`epoch`].
static LAST_USE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The pool of every Envoy v3 message (plus placeholders registered so far).
pub fn pool() -> DescriptorPool {
    LAST_USE_MS.store(now_ms(), Ordering::Relaxed);
    if let Some(p) = POOL.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
        return p.clone();
    }
    write_pool().as_ref().cloned().unwrap_or_else(build_pool)
}

/// Drops the shared pool (clones still held stay valid); the next use rebuilds it.
pub fn release() {
    *POOL.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
}

/// Drops the shared pool if it is built and was not used for `idle`; true when it
/// did. A long-running client calls this now and then: the pool is worth keeping
/// through a burst of updates (rebuilding it takes ~40 ms), not between pushes
/// that come minutes apart.
pub fn release_if_idle(idle: Duration) -> bool {
    if POOL.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none() {
        return false;
    }
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut guard = POOL.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Checked under the write lock: a `pool()` that raced in has stamped its use.
    if guard.is_none() || now_ms().saturating_sub(LAST_USE_MS.load(Ordering::Relaxed)) < idle_ms {
        return false;
    }
    *guard = None;
    true
}

/// An `Any` whose payload type is not in the pool: kept with its type URL, payload dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueAny {
    /// Where it sits in the document, e.g. `listeners[3].filter_chains[0].filters[1].typed_config`.
    pub path: String,
    pub type_url: String,
}

/// A decoded message and the opaque `Any` payloads met on the way.
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    pub message: T,
    pub opaque: Vec<OpaqueAny>,
}

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{path}: unknown field `{field}` in {message}")]
    UnknownField { path: String, field: String, message: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("message type `{0}` is not part of the Envoy API this build knows")]
    UnknownMessage(String),
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl JsonError {
    fn invalid(path: &str, reason: impl Into<String>) -> Self {
        JsonError::Invalid { path: display_path(path), reason: reason.into() }
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "<document>".to_owned()
    } else {
        path.to_owned()
    }
}

/// Parses YAML (a superset of JSON) into a JSON value.
pub fn parse_yaml_or_json(text: &str) -> Result<Value, JsonError> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text)?;
    Ok(serde_json::to_value(yaml)?)
}

/// Decodes a proto3 JSON value into the prost struct `T`. Unknown fields are errors
/// (as in Envoy); unknown `Any` payload types are kept opaque and reported.
pub fn from_json<T>(value: Value) -> Result<Decoded<T>, JsonError>
where
    T: prost::Message + prost::Name + Default,
{
    let (dynamic, opaque) = decode_dynamic(&T::full_name(), value)?;
    let message = dynamic.transcode_to::<T>().map_err(|e| JsonError::invalid("", format!("re-encoding as {}: {e}", T::full_name())))?;
    Ok(Decoded { message, opaque })
}

/// Decodes a proto3 JSON value of the message type `full_name` into a dynamic message.
pub fn decode_dynamic(full_name: &str, mut value: Value) -> Result<(DynamicMessage, Vec<OpaqueAny>), JsonError> {
    let desc = pool().get_message_by_name(full_name).ok_or_else(|| JsonError::UnknownMessage(full_name.to_owned()))?;
    let mut walk = Normalizer::default();
    walk.message(&desc, &mut value, String::new())?;
    let pool = if walk.placeholders.is_empty() { desc.parent_pool().clone() } else { register_placeholders(&walk.placeholders)? };
    let desc = pool.get_message_by_name(full_name).ok_or_else(|| JsonError::UnknownMessage(full_name.to_owned()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &options).map_err(|e| JsonError::invalid("", e.to_string()))?;
    Ok((dynamic, walk.opaque))
}

/// Encodes a prost struct as proto3 JSON with Envoy's `/config_dump` conventions
/// (snake_case field names, defaults omitted).
pub fn to_json<T>(message: &T) -> Result<Value, JsonError>
where
    T: prost::Message + prost::Name,
{
    encode_json(&T::full_name(), &message.encode_to_vec())
}

/// Encodes the protobuf bytes of message type `full_name` as proto3 JSON. `Any`
/// payloads of types outside the pool print as `{"@type": …}` alone.
pub fn encode_json(full_name: &str, bytes: &[u8]) -> Result<Value, JsonError> {
    let desc = pool().get_message_by_name(full_name).ok_or_else(|| JsonError::UnknownMessage(full_name.to_owned()))?;
    let dynamic = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| JsonError::invalid("", format!("decoding {full_name}: {e}")))?;
    let mut unknown = BTreeSet::new();
    collect_unknown_any(&dynamic, &desc.parent_pool().clone(), &mut unknown);
    let dynamic = if unknown.is_empty() {
        dynamic
    } else {
        let pool = register_placeholders(&unknown)?;
        let desc = pool.get_message_by_name(full_name).ok_or_else(|| JsonError::UnknownMessage(full_name.to_owned()))?;
        DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::invalid("", format!("decoding {full_name}: {e}")))?
    };
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
    dynamic.serialize_with_options(serde_json::value::Serializer, &options).map_err(|e| JsonError::invalid("", e.to_string()))
}

/// Type names of `Any` payloads, anywhere inside `message`, that the pool lacks.
fn collect_unknown_any(message: &DynamicMessage, pool: &DescriptorPool, out: &mut BTreeSet<String>) {
    use prost_reflect::Value as V;
    fn visit(value: &V, pool: &DescriptorPool, out: &mut BTreeSet<String>) {
        match value {
            V::Message(m) => collect_unknown_any(m, pool, out),
            V::List(items) => items.iter().for_each(|v| visit(v, pool, out)),
            V::Map(entries) => entries.values().for_each(|v| visit(v, pool, out)),
            _ => {}
        }
    }
    if message.descriptor().full_name() == "google.protobuf.Any" {
        let type_url = message.get_field_by_name("type_url");
        let name = type_url.as_ref().and_then(|v| v.as_str()).map(type_name).unwrap_or_default().to_owned();
        if name.is_empty() {
            return;
        }
        match pool.get_message_by_name(&name).filter(|d| !is_placeholder(d)) {
            None => {
                out.insert(name);
            }
            Some(desc) => {
                let bytes = message.get_field_by_name("value");
                if let Some(inner) = bytes.as_ref().and_then(|v| v.as_bytes()).and_then(|b| DynamicMessage::decode(desc, b.clone()).ok()) {
                    collect_unknown_any(&inner, pool, out);
                }
            }
        }
        return;
    }
    for (_, value) in message.fields() {
        visit(value, pool, out);
    }
}

const PLACEHOLDER_FILE_PREFIX: &str = "node-proxy/opaque/";

/// Whether `desc` is an empty stand-in registered for an opaque type.
fn is_placeholder(desc: &MessageDescriptor) -> bool {
    desc.parent_file().name().starts_with(PLACEHOLDER_FILE_PREFIX)
}

/// Adds an empty message for each name to the shared pool; returns the updated pool.
fn register_placeholders(names: &BTreeSet<String>) -> Result<DescriptorPool, JsonError> {
    let mut guard = write_pool();
    let Some(pool) = guard.as_mut() else { return Err(JsonError::invalid("", "descriptor pool unavailable")) };
    for name in names {
        if pool.get_message_by_name(name).is_some() {
            continue;
        }
        let (package, message) = match name.rsplit_once('.') {
            Some((p, m)) => (Some(p.to_owned()), m.to_owned()),
            None => (None, name.clone()),
        };
        let file = prost_types::FileDescriptorProto {
            name: Some(format!("{PLACEHOLDER_FILE_PREFIX}{name}.proto")),
            package,
            message_type: vec![prost_types::DescriptorProto { name: Some(message), ..Default::default() }],
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        };
        pool.add_file_descriptor_proto(file).map_err(|e| JsonError::invalid("", format!("cannot register opaque type {name}: {e}")))?;
    }
    Ok(pool.clone())
}

/// The message name in a type URL: `type.googleapis.com/a.b.C` -> `a.b.C`.
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

/// One pass over the JSON, guided by the descriptors, before prost-reflect sees it:
/// names the path of any unknown field, and makes unknown `Any` payloads opaque.
#[derive(Default)]
struct Normalizer {
    opaque: Vec<OpaqueAny>,
    placeholders: BTreeSet<String>,
}

impl Normalizer {
    fn message(&mut self, desc: &MessageDescriptor, value: &mut Value, path: String) -> Result<(), JsonError> {
        match desc.full_name() {
            "google.protobuf.Any" => return self.any(value, path),
            // JSON-native or scalar well-known types: nothing inside to check.
            name if name.starts_with("google.protobuf.") => return Ok(()),
            _ => {}
        }
        let Value::Object(fields) = value else {
            if value.is_null() {
                return Ok(());
            }
            return Err(JsonError::invalid(&path, format!("expected an object for {}", desc.full_name())));
        };
        for (key, field_value) in fields.iter_mut() {
            let field = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key)).ok_or_else(|| JsonError::UnknownField {
                path: display_path(&path),
                field: key.clone(),
                message: desc.full_name().to_owned(),
            })?;
            let Kind::Message(inner) = field.kind() else {
                continue;
            };
            let field_path = if path.is_empty() { field.name().to_owned() } else { format!("{path}.{}", field.name()) };
            if field.is_map() {
                let value_kind = inner.map_entry_value_field().kind();
                let (Kind::Message(value_desc), Value::Object(entries)) = (value_kind, field_value) else {
                    continue;
                };
                for (k, v) in entries.iter_mut() {
                    self.message(&value_desc, v, format!("{field_path}[{k:?}]"))?;
                }
            } else if field.is_list() {
                let Value::Array(items) = field_value else {
                    return Err(JsonError::invalid(&field_path, "expected a list"));
                };
                for (i, item) in items.iter_mut().enumerate() {
                    self.message(&inner, item, format!("{field_path}[{i}]"))?;
                }
            } else {
                self.message(&inner, field_value, field_path)?;
            }
        }
        // An empty `Any` (`{}`) is the default value; prost-reflect wants `@type`, so drop it.
        remove_empty_any_fields(desc, fields);
        Ok(())
    }

    fn any(&mut self, value: &mut Value, path: String) -> Result<(), JsonError> {
        let Value::Object(fields) = value else {
            return Err(JsonError::invalid(&path, "expected an object for google.protobuf.Any"));
        };
        if fields.is_empty() {
            return Ok(());
        }
        let Some(Value::String(type_url)) = fields.get("@type") else {
            return Err(JsonError::invalid(&path, "an Any needs a string `@type`"));
        };
        let type_url = type_url.clone();
        let name = type_name(&type_url).to_owned();
        let Some(desc) = pool().get_message_by_name(&name).filter(|d| !is_placeholder(d)) else {
            self.opaque.push(OpaqueAny { path: display_path(&path), type_url: type_url.clone() });
            self.placeholders.insert(name);
            fields.retain(|k, _| k == "@type");
            return Ok(());
        };
        if desc.full_name().starts_with("google.protobuf.") {
            // Well-known payloads carry their JSON under "value".
            if let Some(inner) = fields.get_mut("value") {
                self.message(&desc, inner, format!("{path}.value"))?;
            }
            return Ok(());
        }
        let mut payload = Value::Object(std::mem::take(fields));
        if let Value::Object(m) = &mut payload {
            m.remove("@type");
        }
        let result = self.message(&desc, &mut payload, path);
        if let Value::Object(mut m) = payload {
            m.insert("@type".to_owned(), Value::String(type_url));
            *fields = m;
        }
        result
    }
}

/// Removes message fields of type `Any` whose JSON is `{}` (the default value).
fn remove_empty_any_fields(desc: &MessageDescriptor, fields: &mut Map<String, Value>) {
    fields.retain(|key, v| {
        let is_empty_object = matches!(v, Value::Object(m) if m.is_empty());
        if !is_empty_object {
            return true;
        }
        let field = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key));
        !matches!(field.map(|f| f.kind()), Some(Kind::Message(m)) if m.full_name() == "google.protobuf.Any")
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use serde_json::json;

    #[test]
    fn decodes_snake_and_camel_case() {
        let c: Decoded<Cluster> = from_json(json!({"name": "a", "connectTimeout": "1.5s", "lb_policy": "ROUND_ROBIN"})).unwrap();
        assert_eq!(c.message.name, "a");
        assert_eq!(c.message.connect_timeout.unwrap().nanos, 500_000_000);
        assert!(c.opaque.is_empty());
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = from_json::<Listener>(json!({"name": "l", "filter_chains": [{"filters": [{"name": "x", "bogus": 1}]}]})).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("filter_chains[0].filters[0]"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn unknown_any_is_kept_opaque_with_its_type_url() {
        let l: Decoded<Listener> = from_json(json!({
            "name": "l",
            "filter_chains": [{"filters": [{"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig", "foo": {"bar": 1}}}]}]
        }))
        .unwrap();
        assert_eq!(
            l.opaque,
            vec![OpaqueAny { path: "filter_chains[0].filters[0].typed_config".into(), type_url: "type.googleapis.com/stats.PluginConfig".into() }]
        );
        let filter = &l.message.filter_chains[0].filters[0];
        let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) = &filter.config_type else { panic!("typed_config lost") };
        assert_eq!(any.type_url, "type.googleapis.com/stats.PluginConfig");
        // And it prints back without failing.
        let back = to_json(&l.message).unwrap();
        assert_eq!(back["filter_chains"][0]["filters"][0]["typed_config"]["@type"], "type.googleapis.com/stats.PluginConfig");
        // A second document with the same type is made opaque again (the placeholder is not a schema).
        let again: Decoded<Listener> = from_json(json!({
            "name": "l2",
            "filter_chains": [{"filters": [{"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig", "other": true}}]}]
        }))
        .unwrap();
        assert_eq!(again.opaque.len(), 1);
    }

    #[test]
    fn empty_any_is_the_default() {
        let l: Decoded<Listener> = from_json(json!({"name": "l", "filter_chains": [{"filters": [{"name": "x", "typed_config": {}}]}]})).unwrap();
        assert!(l.message.filter_chains[0].filters[0].config_type.is_none());
    }

    #[test]
    fn known_any_round_trips() {
        let doc = json!({
            "name": "l",
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "s", "cluster": "c"}}]}]
        });
        let l: Decoded<Listener> = from_json(doc.clone()).unwrap();
        assert_eq!(to_json(&l.message).unwrap(), doc);
    }

    #[test]
    fn yaml_is_accepted() {
        let v = parse_yaml_or_json("name: a\nconnect_timeout: 2s\n").unwrap();
        let c: Decoded<Cluster> = from_json(v).unwrap();
        assert_eq!(c.message.connect_timeout.unwrap().seconds, 2);
    }

    #[test]
    fn an_idle_pool_is_released_and_comes_back_on_use() {
        let held = pool();
        // Just used: not idle for an hour.
        assert!(!release_if_idle(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        // Other tests may use the pool meanwhile (their use resets the clock) or find it
        // released (they rebuild it): retry until this thread sees its own release.
        let released = (0..50).any(|_| {
            release_if_idle(Duration::from_millis(5)) || {
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        });
        assert!(released, "an idle pool was never released");
        // A clone taken before stays valid, and the next use builds the pool again.
        assert!(held.get_message_by_name("envoy.config.cluster.v3.Cluster").is_some());
        assert!(pool().get_message_by_name("envoy.config.cluster.v3.Cluster").is_some());
    }
}
