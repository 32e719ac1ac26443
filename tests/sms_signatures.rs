//! Carrier webhook signatures against independent code: Twilio's own Python library
//! (`twilio.request_validator.RequestValidator`, PyPI) signs and validates the same requests
//! as `commhub::sms::signature`, and an Ed25519 key made and used by `openssl` (a Telnyx-style
//! signature over `timestamp|body`) verifies, while a changed body or key does not.

mod common;

use commhub::sms::signature::{SignatureError, telnyx_verify, twilio_signature, twilio_valid};

#[test]
fn twilio_signatures_agree_with_twilios_request_validator() {
    let url = "https://hub.example.com/functions/v1/sms-webhook-mo?token=abc&x=1";
    let params: Vec<(String, String)> = [
        ("MessageSid", "SM1234567890abcdef"),
        ("From", "+15557654321"),
        ("To", "+15551230000"),
        ("Body", "Stop! Ça coûte 5€ 😀"),
        ("NumMedia", "0"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let token = "0123456789abcdef0123456789abcdef";
    let ours = twilio_signature(token, url, &params);
    let script = r#"
import json, sys
from twilio.request_validator import RequestValidator
a = json.loads(sys.stdin.read())
v = RequestValidator(a["token"])
params = dict(a["params"])
print(json.dumps({"theirs": v.compute_signature(a["url"], params),
                  "valid": v.validate(a["url"], params, a["ours"]),
                  "tampered": v.validate(a["url"], dict(params, Body="x"), a["ours"])}))
"#;
    let input = serde_json::json!({"token": token, "url": url, "params": params, "ours": ours});
    let mut child = std::process::Command::new(common::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "twilio's validator (pip install twilio): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["theirs"], ours.as_str(), "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["tampered"], false);
    assert!(twilio_valid(
        token,
        url,
        &params,
        v["theirs"].as_str().expect("sig")
    ));
}

fn run(cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn telnyx_style_ed25519_signatures_made_by_openssl_verify() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = std::env::temp_dir().join(format!("commhub-ed25519-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("key.pem");
    let k = key.display().to_string();
    run("openssl", &["genpkey", "-algorithm", "ed25519", "-out", &k]);
    // The raw public key: the last 32 bytes of its DER SubjectPublicKeyInfo.
    let der = run(
        "openssl",
        &["pkey", "-in", &k, "-pubout", "-outform", "DER"],
    );
    let public = b64.encode(&der[der.len() - 32..]);
    let body = br#"{"data":{"event_type":"message.received","payload":{"text":"STOP"}}}"#;
    let ts = "1796150000";
    let msg = dir.join("msg");
    std::fs::write(&msg, [ts.as_bytes(), b"|", body].concat()).expect("msg");
    let sig = run(
        "openssl",
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            &k,
            "-in",
            &msg.display().to_string(),
        ],
    );
    let sig = b64.encode(&sig);
    assert_eq!(
        telnyx_verify(&public, ts, body, &sig, 1796150030, 300),
        Ok(())
    );
    assert_eq!(
        telnyx_verify(&public, ts, b"{\"data\":{}}", &sig, 1796150030, 300),
        Err(SignatureError::Invalid)
    );
    assert_eq!(
        telnyx_verify(&public, "1796150001", body, &sig, 1796150030, 300),
        Err(SignatureError::Invalid),
        "the timestamp is signed too"
    );
    let other = b64.encode([7u8; 32]);
    assert!(telnyx_verify(&other, ts, body, &sig, 1796150030, 300).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
