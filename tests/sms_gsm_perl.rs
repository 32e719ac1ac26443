//! GSM 03.38 against an independent implementation: Perl's `Encode::GSM0338` (in Debian's
//! perl). Every character of the default alphabet and the extension table, and random texts
//! made of them, must encode to the same septets; every other character of a sample of
//! Unicode must be one neither side knows (Perl substitutes `?`, we switch to UCS-2).

use std::io::Write;
use std::process::{Command, Stdio};

use commhub::sms::encoding::{Encoding, char_septets, encoding_of, to_septets};

/// Perl's septets for each text (hex-encoded UTF-8 in, hex out, one per line).
fn perl_encode(texts: &[String]) -> Vec<Vec<u8>> {
    let script = r#"use Encode; while (my $l = <STDIN>) { chomp $l; my $t = decode("UTF-8", pack("H*", $l)); print unpack("H*", encode("gsm0338", $t)), "\n"; }"#;
    let mut child = Command::new("perl")
        .args(["-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("perl");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for t in texts {
            let hex: String = t.bytes().map(|b| format!("{b:02x}")).collect();
            writeln!(stdin, "{hex}").expect("write");
        }
    }
    let out = child.wait_with_output().expect("perl output");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

#[test]
fn gsm_septets_match_perls_encode_gsm0338() {
    // Every GSM character alone (the basic table minus ESC, the extension table).
    let gsm: Vec<char> = (0u32..0x3000)
        .filter_map(char::from_u32)
        .filter(|&c| char_septets(c).is_some())
        .collect();
    assert_eq!(
        gsm.len(),
        127 + 10,
        "127 basic characters and 10 extensions"
    );
    let mut texts: Vec<String> = gsm.iter().map(|c| c.to_string()).collect();
    // Random texts of them.
    for n in 0..200 {
        let t: String = (0..(1 + n % 40))
            .map(|_| gsm[rand::random::<u32>() as usize % gsm.len()])
            .collect();
        texts.push(t);
    }
    let perl = perl_encode(&texts);
    for (t, p) in texts.iter().zip(&perl) {
        assert_eq!(to_septets(t).as_deref(), Some(&p[..]), "{t:?}");
        assert_eq!(encoding_of(t), Encoding::Gsm7);
    }
    // Characters outside GSM 03.38: Perl writes `?` (0x3F); we send the text as UCS-2.
    let others: Vec<String> = (0x20u32..0x3000)
        .filter_map(char::from_u32)
        .filter(|c| char_septets(*c).is_none() && !c.is_control())
        .step_by(7)
        .map(|c| c.to_string())
        .collect();
    let perl = perl_encode(&others);
    for (t, p) in others.iter().zip(&perl) {
        assert_eq!(p, &vec![0x3F], "Perl knows {t:?} as {p:?}");
        assert_eq!(encoding_of(t), Encoding::Ucs2, "{t:?}");
    }
}
