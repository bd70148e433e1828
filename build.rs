//! Build script: links `walden-restore` as a position-dependent executable (`-no-pie`) on
//! Linux, where the C compiler driver rustc links with accepts it.
//!
//! PostgreSQL starts `walden-restore wal-fetch` once per WAL segment, and for a segment that
//! does not exist (the end of recovery, every timeline probe) starting the process is all the
//! work there is. A position-independent binary makes the loader apply ~7,800 relocations
//! and copy the ~30 pages they touch before `main`; without them a missing-file call costs
//! 7–8% less (0.86–0.88× `cp` instead of 0.93–0.97× in `benches/restore_vs_cp.sh`'s
//! per-call measurement; see benches/README.md). The price is that the binary's own code is
//! always loaded at the same address (libraries and stacks are still randomized).
//! `WALDEN_PIE=1` at build time keeps the usual position-independent executable.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WALDEN_PIE");
    println!("cargo:rerun-if-env-changed=CC");
    if std::env::var_os("WALDEN_PIE").is_none() && links_without_pie() {
        println!("cargo:rustc-link-arg-bin=walden-restore=-no-pie");
    }
}

/// Whether this is a Linux build whose C compiler driver links and runs a program with
/// `-no-pie` (every GCC since 6 and every Clang does; the probe keeps others building).
fn links_without_pie() -> bool {
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("TARGET") != var("HOST") {
        return false;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let source = out.join("no_pie_probe.c");
    let program = out.join("no_pie_probe");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(cc)
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .arg("-no-pie")
        .output()
        .is_ok_and(|o| o.status.success() && o.stderr.is_empty());
    linked && Command::new(&program).status().is_ok_and(|s| s.success())
}
