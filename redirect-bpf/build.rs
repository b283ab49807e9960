//! Compiles `bpf/redirect.c` into `$OUT_DIR/redirect.bpf.o` with clang.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "bpf/redirect.c";
const INCLUDE: &str = "/usr/include/x86_64-linux-gnu";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
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

    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR not set (build.rs runs under cargo)"))).join("redirect.bpf.o");
    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{INCLUDE}"))
        .arg("-c")
        .arg(SOURCE)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("bpf/bpf_helpers.h") && stderr.contains("not found") {
            fail("libbpf headers not found: apt-get install libbpf-dev");
        }
        fail(&format!("{clang} failed to compile {SOURCE}:\n{stderr}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}
