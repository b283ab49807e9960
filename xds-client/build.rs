//! Compiles the Envoy v3 API (the .proto sources that ship inside the `envoy-types`
//! crate) plus our few extra protos into one encoded `FileDescriptorSet`, embedded in
//! the library. At run time it backs a `prost_reflect::DescriptorPool`, which is what
//! turns proto3 JSON/YAML into the `envoy-types` prost structs and back.
//!
//! Each file gets its own `protox::Compiler`: a single compiler over all files
//! mis-resolves relative names once sibling packages are loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

const ENVOY_TYPES_VERSION: &str = "0.7.7";
/// Files of the Envoy API that do not link on their own (their relative type names
/// resolve into a sibling package); nothing node-proxy reads lives in them.
const KNOWN_UNLINKABLE: &[&str] = &["envoy/extensions/clusters/dynamic_forward_proxy/v3/cluster.proto"];
const INCLUDE_DIRS: &[&str] = &["data-plane-api", "xds", "googleapis", "protoc-gen-validate", "cel-spec/proto", "opentelemetry-proto", "client_model"];

fn main() {
    println!("cargo:rerun-if-env-changed=ENVOY_TYPES_PROTO_DIR");
    println!("cargo:rerun-if-changed=proto");
    let envoy_protos = match locate_envoy_protos() {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let local = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("proto");

    let mut includes: Vec<PathBuf> = INCLUDE_DIRS.iter().map(|d| envoy_protos.join(d)).collect();
    includes.push(local.clone());

    let mut files = Vec::new();
    collect_protos(&envoy_protos.join("data-plane-api"), &envoy_protos.join("data-plane-api/envoy"), &mut files);
    collect_protos(&envoy_protos.join("xds"), &envoy_protos.join("xds/xds/type"), &mut files);
    collect_protos(&local, &local, &mut files);
    files.sort();

    let mut merged = BTreeMap::new();
    let mut failed = Vec::new();
    for file in &files {
        let mut compiler = match protox::Compiler::new(&includes) {
            Ok(c) => c,
            Err(e) => panic!("protox: bad include paths {includes:?}: {e}"),
        };
        compiler.include_imports(true).include_source_info(false);
        if let Err(e) = compiler.open_file(file) {
            if !KNOWN_UNLINKABLE.contains(&file.as_str()) {
                failed.push(format!("{file}: {e}"));
            }
            continue;
        }
        for fd in compiler.file_descriptor_set().file {
            merged.entry(fd.name().to_owned()).or_insert(fd);
        }
    }
    for f in &failed {
        println!("cargo:warning=skipped proto {f}");
    }
    let set = prost_types::FileDescriptorSet { file: merged.into_values().collect() };
    // Fail the build here, not at start-up, if the set is not self-consistent.
    if let Err(e) = prost_reflect::DescriptorPool::from_file_descriptor_set(set.clone()) {
        panic!("descriptor set does not link: {e}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let out = out_dir.join("envoy_descriptor_set.bin");
    std::fs::write(&out, set.encode_to_vec()).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    istio_types(&local, &out_dir);
}

/// prost structs for Istio's workload API (`proto/istio/**`), from the same compiler.
fn istio_types(local: &Path, out_dir: &Path) {
    let files = ["istio/workload/workload.proto", "istio/security/authorization.proto"];
    let mut compiler = protox::Compiler::new([local]).unwrap_or_else(|e| panic!("protox: {e}"));
    compiler.include_imports(true).include_source_info(true);
    for f in files {
        compiler.open_file(f).unwrap_or_else(|e| panic!("compiling {f}: {e}"));
    }
    let fds = compiler.file_descriptor_set();
    prost_build::Config::new().out_dir(out_dir).enable_type_names().compile_fds(fds).unwrap_or_else(|e| panic!("prost-build for Istio's workload API: {e}"));
}

/// Files under `dir`, as paths relative to the include root `root`.
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_protos(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
}

/// The `proto/` folder of the `envoy-types` crate: `ENVOY_TYPES_PROTO_DIR` if set,
/// else the crate's unpacked source in the cargo registry.
fn locate_envoy_protos() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("ENVOY_TYPES_PROTO_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set: set ENVOY_TYPES_PROTO_DIR to envoy-types' proto/ folder".to_owned())?;
    let registry = cargo_home.join("registry/src");
    let wanted = format!("envoy-types-{ENVOY_TYPES_VERSION}");
    for index in std::fs::read_dir(&registry).map_err(|e| format!("{}: {e}", registry.display()))?.flatten() {
        let candidate = index.path().join(&wanted).join("proto");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "envoy-types {ENVOY_TYPES_VERSION} sources not found under {}: run `cargo fetch`, or set ENVOY_TYPES_PROTO_DIR to its proto/ folder",
        registry.display()
    ))
}
