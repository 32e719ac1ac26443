//! MMS media (pure): the type of an item from its bytes (what it claims is not trusted), its
//! storage key under `sms-media/`, and signed links a carrier fetches it by.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// A media type we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub mime: &'static str,
    pub ext: &'static str,
}

const JPEG: Kind = Kind {
    mime: "image/jpeg",
    ext: "jpg",
};
const PNG: Kind = Kind {
    mime: "image/png",
    ext: "png",
};
const GIF: Kind = Kind {
    mime: "image/gif",
    ext: "gif",
};
const WEBP: Kind = Kind {
    mime: "image/webp",
    ext: "webp",
};
const MP4: Kind = Kind {
    mime: "video/mp4",
    ext: "mp4",
};
const GPP: Kind = Kind {
    mime: "video/3gpp",
    ext: "3gp",
};
const MP3: Kind = Kind {
    mime: "audio/mpeg",
    ext: "mp3",
};
const AMR: Kind = Kind {
    mime: "audio/amr",
    ext: "amr",
};
const PDF: Kind = Kind {
    mime: "application/pdf",
    ext: "pdf",
};
const VCARD: Kind = Kind {
    mime: "text/vcard",
    ext: "vcf",
};

/// The type of `b` from its magic numbers, if it is one we accept.
pub fn sniff(b: &[u8]) -> Option<Kind> {
    let starts = |m: &[u8]| b.starts_with(m);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Some(JPEG)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some(PNG)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some(GIF)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(WEBP)
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        if b[8..11] == *b"3gp" || b[8..11] == *b"3g2" {
            Some(GPP)
        } else {
            Some(MP4)
        }
    } else if starts(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0) {
        Some(MP3)
    } else if starts(b"#!AMR") {
        Some(AMR)
    } else if starts(b"%PDF-") {
        Some(PDF)
    } else if b.len() >= 11 && b[..11].eq_ignore_ascii_case(b"BEGIN:VCARD") {
        Some(VCARD)
    } else {
        None
    }
}

/// Whether a declared content type agrees with the sniffed kind (parameters ignored; a few
/// common aliases accepted; an empty declaration is fine).
pub fn declared_matches(declared: &str, kind: Kind) -> bool {
    let d = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if d.is_empty() || d == kind.mime || d == "application/octet-stream" {
        return true;
    }
    matches!(
        (d.as_str(), kind.mime),
        ("image/jpg", "image/jpeg")
            | ("audio/mp3", "audio/mpeg")
            | ("text/x-vcard", "text/vcard")
            | ("text/directory", "text/vcard")
            | ("video/3gpp", "video/mp4")
            | ("audio/mp4", "video/mp4")
    )
}

/// `sms-media/{yyyy}/{mm}/{dd}/{message_id}/{n}.{ext}`.
pub fn storage_key(day: chrono::NaiveDate, message: Uuid, position: usize, kind: Kind) -> String {
    format!(
        "sms-media/{}/{message}/{position}.{}",
        day.format("%Y/%m/%d"),
        kind.ext
    )
}

/// The signature of a media link: HMAC-SHA256 over the key and the expiry, hex.
pub fn sign(secret: &[u8], key: &str, expires: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a link's signature is right and it has not expired (constant-time compare).
pub fn verify(secret: &[u8], key: &str, expires: i64, sig: &str, now: i64) -> bool {
    use subtle::ConstantTimeEq;
    if expires < now {
        return false;
    }
    let want = sign(secret, key, expires);
    !want.is_empty() && bool::from(want.as_bytes().ct_eq(sig.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_magic_number_is_recognised() {
        let cases: [(&[u8], &str); 11] = [
            (&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0], "image/jpeg"),
            (b"\x89PNG\r\n\x1a\n....", "image/png"),
            (b"GIF89a....", "image/gif"),
            (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
            (b"\0\0\0\x18ftypisom....", "video/mp4"),
            (b"\0\0\0\x18ftyp3gp4....", "video/3gpp"),
            (b"ID3\x03\0....", "audio/mpeg"),
            (&[0xFF, 0xFB, 0x90, 0x00], "audio/mpeg"),
            (b"#!AMR\n", "audio/amr"),
            (b"%PDF-1.7\n", "application/pdf"),
            (b"begin:vcard\r\nVERSION:3.0", "text/vcard"),
        ];
        for (bytes, mime) in cases {
            assert_eq!(sniff(bytes).map(|k| k.mime), Some(mime), "{mime}");
        }
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"RIFF"), None);
    }

    #[test]
    fn a_declared_type_must_agree_with_the_bytes() {
        assert!(declared_matches("image/png", PNG));
        assert!(declared_matches("IMAGE/PNG; q=1", PNG));
        assert!(declared_matches("", PNG));
        assert!(declared_matches("image/jpg", JPEG));
        assert!(!declared_matches("image/png", JPEG));
        assert!(!declared_matches("text/html", PDF));
    }

    #[test]
    fn links_are_signed_and_expire() {
        let k = "sms-media/2026/12/01/x/0.png";
        let s = sign(b"secret", k, 1000);
        assert!(verify(b"secret", k, 1000, &s, 999));
        assert!(!verify(b"secret", k, 1000, &s, 1001), "expired");
        assert!(!verify(b"other", k, 1000, &s, 999), "other key");
        assert!(
            !verify(b"secret", "sms-media/other", 1000, &s, 999),
            "other item"
        );
        assert!(!verify(b"secret", k, 2000, &s, 999), "other expiry");
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(
            storage_key(day, Uuid::nil(), 2, PNG),
            "sms-media/2026/12/01/00000000-0000-0000-0000-000000000000/2.png"
        );
    }
}
