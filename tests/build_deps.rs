//! Guard: building commhub needs nothing beyond what a fresh Debian machine with the Rust
//! toolchain has (rustc, gcc as `cc`, `ar`, `sh`, `make`). No CMake, no pkg-config lookups of
//! system libraries, no libclang for bindgen.
//!
//! Every build-time dependency edge (a crate's `[build-dependencies]`) in the resolved graph for
//! this host must be one reviewed below. A new edge fails this test with the list of edges to
//! review: check what the build script runs, then add it here with the reason it needs no extra
//! system package. The registry's `cmake` crate is refused outright: libopus goes through the
//! stand-in in `media/cmake-libopus`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Build-time helpers that only inspect rustc or generate Rust code: allowed for any crate.
const PURE_RUST_HELPERS: &[&str] = &[
    "autocfg",
    "cfg_aliases",
    "rustc_version",
    "rustversion",
    "unicase",
    "version_check",
];

/// (crate, its build dependency, why that needs no system package beyond cc/sh/make).
const REVIEWED: &[(&str, &str, &str)] = &[
    ("ring", "cc", "compiles its own C and assembly with cc"),
    ("alloca", "cc", "one C file compiled with cc"),
    (
        "libsqlite3-sys",
        "cc",
        "the `bundled` feature (checked below) compiles the SQLite amalgamation with cc",
    ),
    (
        "libsqlite3-sys",
        "pkg-config",
        "only consulted without `bundled`, which is checked to be on",
    ),
    (
        "libsqlite3-sys",
        "vcpkg",
        "Windows/MSVC only, and only without `bundled`",
    ),
    (
        "mp3lame-sys",
        "autotools",
        "runs LAME's shipped ./configure and make: sh, make and cc, no autoconf",
    ),
    (
        "opusic-sys",
        "cmake",
        "resolved to the path crate media/cmake-libopus (checked below), which uses cc only",
    ),
    (
        "cmake",
        "cc",
        "media/cmake-libopus compiles libopus with cc",
    ),
];

fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV prints the host")
        .to_string()
}

#[test]
fn every_build_dependency_needs_only_cc_sh_and_make() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(host_triple())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    struct Pkg {
        name: String,
        source: Option<String>,
        manifest: String,
    }
    let pkgs: HashMap<String, Pkg> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                Pkg {
                    name: p["name"].as_str().unwrap().to_string(),
                    source: p["source"].as_str().map(str::to_string),
                    manifest: p["manifest_path"].as_str().unwrap().to_string(),
                },
            )
        })
        .collect();
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let features_of = |name: &str| -> BTreeSet<String> {
        nodes
            .iter()
            .filter(|n| pkgs[n["id"].as_str().unwrap()].name == name)
            .flat_map(|n| n["features"].as_array().unwrap().iter())
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    };

    let mut edges = BTreeSet::new();
    let mut unreviewed = Vec::new();
    for node in nodes {
        let from = &pkgs[node["id"].as_str().unwrap()];
        for dep in node["deps"].as_array().unwrap() {
            let is_build = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() == Some("build"));
            if !is_build {
                continue;
            }
            let to = &pkgs[dep["pkg"].as_str().unwrap()];
            edges.insert((from.name.clone(), to.name.clone()));
            if to.name == "cmake" {
                assert!(
                    to.source.is_none() && to.manifest.contains("media/cmake-libopus"),
                    "{} needs the registry's cmake crate (CMake must be installed to build it); \
                     commhub builds must not need CMake: see media/cmake-libopus/README.md",
                    from.name
                );
            }
            let reviewed = PURE_RUST_HELPERS.contains(&to.name.as_str())
                || REVIEWED
                    .iter()
                    .any(|(f, t, _)| *f == from.name && *t == to.name);
            if !reviewed {
                unreviewed.push(format!("{} -> {}", from.name, to.name));
            }
        }
    }
    assert!(
        unreviewed.is_empty(),
        "build-time dependencies not reviewed for 'needs only cc, sh and make' \
         (see the top of tests/build_deps.rs): {unreviewed:?}"
    );
    // The edges this guard exists for are really in the graph (so the test cannot pass on an
    // empty or misread graph).
    for (from, to) in [("opusic-sys", "cmake"), ("libsqlite3-sys", "cc")] {
        assert!(
            edges.contains(&(from.to_string(), to.to_string())),
            "expected build edge {from} -> {to} in the graph; edges: {edges:?}"
        );
    }
    assert!(
        features_of("libsqlite3-sys").contains("bundled"),
        "libsqlite3-sys without `bundled` links the system's libsqlite3 (a -dev package)"
    );
    assert!(
        features_of("opusic-sys").contains("bundled"),
        "opusic-sys without `bundled` links the system's libopus (a -dev package)"
    );
}
