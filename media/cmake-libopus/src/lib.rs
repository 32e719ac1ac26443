//! A stand-in for the `cmake` crate that builds libopus with the `cc` crate only.
//!
//! `opusic-sys` (the libopus bindings under the `opus` crate) drives its bundled libopus build
//! through `cmake::Config`. The workspace patches `cmake` with this crate, which offers the part
//! of that API `opusic-sys` calls and compiles the libopus tree itself, so building commhub needs
//! a C compiler but no CMake. See README.md for what is and is not built.
//!
//! This code runs inside a build script: failures are panics with a message, which cargo shows
//! as the build error.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Builds the libopus tree at `path` and returns the install prefix (`<prefix>/lib/libopus.a`).
pub fn build<P: AsRef<Path>>(path: P) -> PathBuf {
    Config::new(path).build()
}

/// The subset of `cmake::Config` that `opusic-sys` uses. Options are recorded and mapped to the
/// compiler flags and source groups CMake would have used.
pub struct Config {
    path: PathBuf,
    defines: BTreeMap<String, String>,
    envs: Vec<(OsString, OsString)>,
    out_dir: Option<PathBuf>,
}

impl Config {
    pub fn new<P: AsRef<Path>>(path: P) -> Config {
        let path = path.as_ref();
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            // Build scripts run in their package's directory, as cmake-rs assumes too.
            let base = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_default();
            base.join(path)
        };
        Config {
            path,
            defines: BTreeMap::new(),
            envs: Vec::new(),
            out_dir: None,
        }
    }

    pub fn define<K: AsRef<OsStr>, V: AsRef<OsStr>>(&mut self, k: K, v: V) -> &mut Config {
        self.defines.insert(
            k.as_ref().to_string_lossy().into_owned(),
            v.as_ref().to_string_lossy().into_owned(),
        );
        self
    }

    /// `-DNAME=VALUE` arguments are read as defines; anything else has no meaning here.
    pub fn configure_arg<A: AsRef<OsStr>>(&mut self, arg: A) -> &mut Config {
        let arg = arg.as_ref().to_string_lossy().into_owned();
        if let Some((k, v)) = arg.strip_prefix("-D").and_then(|kv| kv.split_once('=')) {
            self.defines.insert(k.to_string(), v.to_string());
        }
        self
    }

    /// Environment for the compiler (opusic-sys uses it to strip `-flto` from CFLAGS).
    pub fn env<K: AsRef<OsStr>, V: AsRef<OsStr>>(&mut self, key: K, value: V) -> &mut Config {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// A CMake generator (Ninja, Makefiles) has no meaning without CMake.
    pub fn generator<T: AsRef<OsStr>>(&mut self, _generator: T) -> &mut Config {
        self
    }

    pub fn out_dir<P: AsRef<Path>>(&mut self, out: P) -> &mut Config {
        self.out_dir = Some(out.as_ref().to_path_buf());
        self
    }

    /// Compiles the tree and returns the prefix holding `lib/libopus.a`.
    pub fn build(&mut self) -> PathBuf {
        if !self.path.join("opus_sources.mk").is_file() {
            panic!(
                "commhub's cmake stand-in (media/cmake-libopus) only builds libopus, and {} is \
                 not a libopus source tree. A new build dependency uses CMake: see \
                 tests/build_deps.rs and media/cmake-libopus/README.md.",
                self.path.display()
            );
        }
        if self.envs.iter().any(|(k, _)| k == "CFLAGS") {
            // opusic-sys filters `-flto` out of CFLAGS for CMake; cc reads CFLAGS from the
            // environment itself and a build script may not change its own environment here
            // (the workspace forbids unsafe code), so the flags are used as given.
            println!("cargo:warning=CFLAGS contains -flto; libopus is compiled with it as given");
        }
        let prefix = self.out_dir.clone().unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"))
        });
        let plan = Plan::new(&self.path, &self.defines, &target_arch());
        let lib_dir = prefix.join("lib");
        std::fs::create_dir_all(&lib_dir).expect("create <OUT_DIR>/lib");
        plan.compile(&self.path, &lib_dir);
        println!("cargo:rerun-if-changed={}", self.path.display());
        prefix
    }
}

fn target_arch() -> String {
    std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
}

/// Source files of the tree, by the variable names of its `*_sources.mk` files.
fn read_source_lists(root: &Path) -> HashMap<String, Vec<String>> {
    let mut lists = HashMap::new();
    for mk in ["celt_sources.mk", "silk_sources.mk", "opus_sources.mk"] {
        let text = std::fs::read_to_string(root.join(mk))
            .unwrap_or_else(|e| panic!("read {}: {e}", root.join(mk).display()));
        parse_mk(&text, &mut lists);
    }
    lists
}

/// Reads `NAME = a.c b.c \` assignments (with line continuations) from a makefile fragment.
fn parse_mk(text: &str, into: &mut HashMap<String, Vec<String>>) {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        into.insert(
            name.to_string(),
            value.split_whitespace().map(str::to_string).collect(),
        );
    }
}

/// One group of sources compiled with the same extra flags.
struct Group {
    vars: Vec<&'static str>,
    flags: Vec<&'static str>,
}

/// What to compile and with which defines, decided from the CMake options.
struct Plan {
    defines: Vec<(String, Option<String>)>,
    includes: Vec<PathBuf>,
    flags: Vec<&'static str>,
    groups: Vec<Group>,
    lists: HashMap<String, Vec<String>>,
}

impl Plan {
    fn new(root: &Path, opts: &BTreeMap<String, String>, arch: &str) -> Plan {
        let on = |k: &str| opts.get(k).is_some_and(|v| v.eq_ignore_ascii_case("ON"));
        for unsupported in [
            "OPUS_DRED",
            "OPUS_OSCE",
            "OPUS_DEEP_PLC",
            "OPUS_CUSTOM_MODES",
        ] {
            if on(unsupported) {
                panic!(
                    "commhub's cmake stand-in does not build libopus with {unsupported}=ON; \
                     turn the matching opusic-sys feature off"
                );
            }
        }
        let lists = read_source_lists(root);
        let fixed = on("OPUS_FIXED_POINT");
        let mut defines: Vec<(String, Option<String>)> = [
            "OPUS_BUILD",
            "VAR_ARRAYS",
            "HAVE_LRINTF",
            "HAVE_LRINT",
            "DISABLE_DEBUG_FLOAT",
            "NDEBUG",
        ]
        .iter()
        .map(|d| (d.to_string(), None))
        .collect();
        let mut flags = Vec::new();
        if on("OPUS_HARDENING") {
            defines.push(("ENABLE_HARDENING".into(), None));
        }
        if on("OPUS_FORTIFY_SOURCE") {
            defines.push(("_FORTIFY_SOURCE".into(), Some("2".into())));
        }
        if on("OPUS_STACK_PROTECTOR") {
            flags.push("-fstack-protector-strong");
        }
        let mut includes: Vec<PathBuf> = ["include", "celt", "silk", "dnn", "."]
            .iter()
            .map(|d| root.join(d))
            .collect();
        let mut portable = vec!["CELT_SOURCES", "SILK_SOURCES", "OPUS_SOURCES"];
        if fixed {
            defines.push(("FIXED_POINT".into(), Some("1".into())));
            includes.push(root.join("silk/fixed"));
            portable.push("SILK_SOURCES_FIXED");
        } else {
            includes.push(root.join("silk/float"));
            portable.extend(["SILK_SOURCES_FLOAT", "OPUS_SOURCES_FLOAT"]);
        }
        let mut groups = vec![Group {
            vars: portable,
            flags: vec![],
        }];

        let x86 = arch == "x86_64" || arch == "x86";
        if x86 && !on("OPUS_DISABLE_INTRINSICS") {
            // Each level: (may-have option, presume option, define suffix, -m flags, sources).
            let levels: [(&str, &str, &[&str], Vec<&'static str>); 4] = [
                ("SSE", "SSE", &["-msse"], vec!["CELT_SOURCES_SSE"]),
                ("SSE2", "SSE2", &["-msse2"], vec!["CELT_SOURCES_SSE2"]),
                (
                    "SSE4_1",
                    "SSE4_1",
                    &["-msse4.1"],
                    if fixed {
                        vec![
                            "CELT_SOURCES_SSE4_1",
                            "SILK_SOURCES_SSE4_1",
                            "SILK_SOURCES_FIXED_SSE4_1",
                        ]
                    } else {
                        vec!["CELT_SOURCES_SSE4_1", "SILK_SOURCES_SSE4_1"]
                    },
                ),
                (
                    "AVX2",
                    "AVX2",
                    &["-mavx2", "-mfma", "-mavx"],
                    if fixed {
                        vec!["CELT_SOURCES_AVX2", "SILK_SOURCES_AVX2"]
                    } else {
                        vec![
                            "CELT_SOURCES_AVX2",
                            "SILK_SOURCES_AVX2",
                            "SILK_SOURCES_FLOAT_AVX2",
                        ]
                    },
                ),
            ];
            let mut rtcd = false;
            for (level, _, mflags, vars) in levels {
                let may = on(&format!("OPUS_X86_MAY_HAVE_{level}"));
                let presume = on(&format!("OPUS_X86_PRESUME_{level}"));
                if may {
                    defines.push((format!("OPUS_X86_MAY_HAVE_{level}"), None));
                    groups.push(Group {
                        vars,
                        flags: mflags.to_vec(),
                    });
                }
                if presume {
                    defines.push((format!("OPUS_X86_PRESUME_{level}"), None));
                    flags.extend_from_slice(mflags);
                    if level == "AVX2" {
                        defines.push(("OPUS_X86_PRESUME_SSE4_1".into(), None));
                    }
                }
                rtcd |= may && !presume;
            }
            if rtcd {
                defines.push(("OPUS_HAVE_RTCD".into(), None));
                defines.push(("CPU_INFO_BY_C".into(), None));
                groups.push(Group {
                    vars: vec!["CELT_SOURCES_X86_RTCD", "SILK_SOURCES_X86_RTCD"],
                    flags: vec![],
                });
            }
        } else if !on("OPUS_DISABLE_INTRINSICS") {
            println!(
                "cargo:warning=libopus for {arch} is built from its portable C code by \
                 media/cmake-libopus (no SIMD kernels for this architecture)"
            );
        }
        Plan {
            defines,
            includes,
            flags,
            groups,
            lists,
        }
    }

    fn files(&self, root: &Path, vars: &[&str]) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for var in vars {
            let list = self
                .lists
                .get(*var)
                .unwrap_or_else(|| panic!("libopus tree at {} has no {var} list", root.display()));
            files.extend(
                list.iter()
                    .filter(|f| f.ends_with(".c"))
                    .map(|f| root.join(f)),
            );
        }
        files
    }

    fn base(&self) -> cc::Build {
        let mut b = cc::Build::new();
        // CMake's Release build, whatever the cargo profile: libopus is never debugged here, and
        // one build serves debug and release (as opusic-sys's own CMake call does).
        b.opt_level(3)
            .debug(false)
            .warnings(false)
            .extra_warnings(false)
            .pic(true)
            .flag_if_supported("-std=gnu99")
            .cargo_metadata(false);
        for inc in &self.includes {
            b.include(inc);
        }
        for (k, v) in &self.defines {
            b.define(k, v.as_deref());
        }
        for f in &self.flags {
            b.flag(f);
        }
        b
    }

    fn compile(&self, root: &Path, lib_dir: &Path) {
        let mut objects = Vec::new();
        for (i, group) in self.groups.iter().enumerate() {
            let files = self.files(root, &group.vars);
            if files.is_empty() {
                continue;
            }
            let mut b = self.base();
            for f in &group.flags {
                b.flag(f);
            }
            // Separate object directories: different groups may share file stems.
            let obj_dir = lib_dir.join(format!("obj-{i}"));
            std::fs::create_dir_all(&obj_dir).expect("create object directory");
            b.out_dir(&obj_dir).files(files);
            objects.extend(b.compile_intermediates());
        }
        let mut archive = cc::Build::new();
        archive.cargo_metadata(false).out_dir(lib_dir);
        for o in objects {
            archive.object(o);
        }
        archive.compile("opus");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_continued_assignments() {
        let mut m = HashMap::new();
        parse_mk(
            "CELT_SOURCES = \\\ncelt/a.c \\\ncelt/b.c\n\nX86 = \\\ncelt/x86/c.c\n# comment\n",
            &mut m,
        );
        assert_eq!(m["CELT_SOURCES"], vec!["celt/a.c", "celt/b.c"]);
        assert_eq!(m["X86"], vec!["celt/x86/c.c"]);
    }
}
