//! Compiles every `bpf/<name>.c` into `$OUT_DIR/<name>.bpf.o` with clang.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE_DIR: &str = "bpf";
const INCLUDE: &str = "/usr/include/x86_64-linux-gnu";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE_DIR}");
    println!("cargo:rerun-if-changed={SOURCE_DIR}/common.h");
    println!("cargo:rerun-if-changed=build.rs");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");

    if Command::new(&clang).arg("--version").output().is_err() {
        fail("clang not found: apt-get install clang");
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail("libbpf headers not found: apt-get install libbpf-dev");
    }
    if !Path::new(INCLUDE).join("asm/types.h").exists() {
        fail("kernel asm headers not found in /usr/include/x86_64-linux-gnu: apt-get install linux-libc-dev");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR not set (build.rs runs under cargo)")));
    let mut sources: Vec<PathBuf> = std::fs::read_dir(SOURCE_DIR)
        .unwrap_or_else(|e| fail(&format!("reading {SOURCE_DIR}/: {e}")))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for source in sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or_else(|| fail(&format!("{} has no UTF-8 name", source.display())));
        compile(&clang, &source, &out_dir.join(format!("{stem}.bpf.o")));
    }
}

fn compile(clang: &str, source: &Path, out: &Path) {
    let output = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{INCLUDE}"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("bpf/bpf_helpers.h") && stderr.contains("not found") {
            fail("libbpf headers not found: apt-get install libbpf-dev");
        }
        fail(&format!("{clang} failed to compile {}:\n{stderr}", source.display()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}
