//! Loading configuration from a local file (or the embedded default) into the mesh
//! model, through istio-compat's translator — the same path xDS will feed.

use std::path::{Path, PathBuf};

use istio_compat::model::Model;
use istio_compat::translate::{self, DocumentError, Rejected, Translation, Unsupported};
use xds_client::pb::envoy::admin::v3::ConfigDump;
use xds_client::pb::envoy::config::bootstrap::v3::Bootstrap;
use xds_client::protojson;

/// The embedded default configuration (see `config/default.yaml`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.yaml");

/// Where the live configuration came from, kept for `/config_dump`.
#[derive(Default)]
pub struct ConfigSource {
    /// A file path, or `embedded default`.
    pub origin: String,
    pub bootstrap: Option<Bootstrap>,
    pub dump: Option<ConfigDump>,
    pub unsupported: Vec<Unsupported>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {source}")]
    Decode { origin: String, source: DocumentError },
    #[error("config {origin}: {} resource(s) rejected:\n  {}", rejected.len(), rejected.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n  "))]
    Rejected { origin: String, rejected: Vec<Rejected> },
}

/// A loaded configuration.
pub struct Loaded {
    pub model: Model,
    pub source: ConfigSource,
}

pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    load_text(&text, &path.display().to_string())
}

pub fn load_default() -> Result<Loaded, ConfigError> {
    load_text(DEFAULT_CONFIG, "embedded default")
}

/// Decodes and translates a document. A local file is all-or-nothing, as in Envoy:
/// any rejected resource fails the load, naming the resource and field.
pub fn load_text(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    let decode_err = |source| ConfigError::Decode { origin: origin.to_owned(), source };
    let value = protojson::parse_yaml_or_json(text).map_err(|e| decode_err(DocumentError::Decode(e)))?;
    let (translation, bootstrap, dump) = if value.get("configs").is_some() {
        let dump = protojson::from_json::<ConfigDump>(value).map_err(|e| decode_err(DocumentError::Decode(e)))?.message;
        (translate::from_config_dump(&dump), None, Some(dump))
    } else if value.is_object() {
        let bootstrap = protojson::from_json::<Bootstrap>(value).map_err(|e| decode_err(DocumentError::Decode(e)))?.message;
        (translate::from_bootstrap(&bootstrap), Some(bootstrap), None)
    } else {
        return Err(decode_err(DocumentError::UnknownShape));
    };
    let Translation { model, unsupported, rejected } = translation;
    if !rejected.is_empty() {
        return Err(ConfigError::Rejected { origin: origin.to_owned(), rejected });
    }
    for u in &unsupported {
        tracing::warn!("{u}");
    }
    Ok(Loaded { model, source: ConfigSource { origin: origin.to_owned(), bootstrap, dump, unsupported } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads() {
        let loaded = load_default().unwrap();
        assert!(loaded.model.listeners.contains_key("virtualOutbound"));
        assert!(loaded.model.clusters.contains_key("PassthroughCluster"));
        assert!(loaded.source.unsupported.is_empty(), "{:?}", loaded.source.unsupported);
    }

    #[test]
    fn bad_field_is_named() {
        let err = load_text("static_resources:\n  clusters:\n  - name: c\n    conect_timeout: 1s\n", "test").err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("static_resources.clusters[0]") && msg.contains("conect_timeout"), "{msg}");
    }

    #[test]
    fn invalid_resource_is_rejected_with_its_reason() {
        let doc = r#"
static_resources:
  clusters:
  - name: c
    type: STATIC
"#;
        let msg = load_text(doc, "test").err().unwrap().to_string();
        assert!(msg.contains("cluster c") && msg.contains("load_assignment"), "{msg}");
    }
}
