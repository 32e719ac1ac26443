//! Running sipp (Debian `sip-tester`) from tests: scenario paths, a directory with the `pcap`
//! link its built-in `uac_pcap` expects, and a bounded run that returns the exit code and the
//! tail of its output and error log. sipp plays pcaps through a raw socket: it needs root.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A fresh directory under the system temp dir.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("commhub-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// A directory with `pcap -> /usr/share/sip-tester`, as sipp's built-in uac_pcap expects.
pub fn sipp_dir() -> PathBuf {
    let d = tmpdir("sipp");
    std::os::unix::fs::symlink("/usr/share/sip-tester", d.join("pcap")).expect("symlink");
    d
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// `tests/sip/<name>`.
pub fn scenario(name: &str) -> String {
    super::repo()
        .join("tests/sip")
        .join(name)
        .display()
        .to_string()
}

/// Run sipp in `dir` (at most 60 s of calls); exit code and a digest of its output.
pub async fn sipp(dir: &Path, args: &[String]) -> (i32, String) {
    let out = tokio::process::Command::new("sipp")
        .args(args)
        .args([
            "-nostdin",
            "-timeout",
            "60s",
            "-timeout_error",
            "-trace_err",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("sipp runs (apt install sip-tester)");
    let mut errs = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with("_errors.log") {
                errs.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    let text = format!(
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr),
        errs
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Arguments for a sipp UAS acting as the carrier trunk on `port`, taking one call.
pub fn trunk_args(port: u16, scenario_args: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = scenario_args.iter().map(|s| s.to_string()).collect();
    let mp = free_udp_port().to_string();
    let p = port.to_string();
    a.extend(
        [
            "-i",
            "127.0.0.1",
            "-p",
            &p,
            "-mi",
            "127.0.0.1",
            "-mp",
            &mp,
            "-m",
            "1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// Start sipp in `dir` in the background (a UAS acting as the trunk) and give it half a second
/// to bind before the test dials it.
pub async fn spawn_sipp(dir: &Path, args: Vec<String>) -> tokio::task::JoinHandle<(i32, String)> {
    let dir = dir.to_path_buf();
    let h = tokio::spawn(async move { sipp(&dir, &args).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    h
}
