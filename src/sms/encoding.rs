//! GSM 03.38 (3GPP TS 23.038) default alphabet and its extension table: which texts fit the
//! 7-bit alphabet, how many septets they take (extension characters take two: ESC + code),
//! and their septets. A text with any other character goes as UCS-2 (UTF-16 code units). Pure.

/// The default alphabet, by septet value (0x1B is the escape to the extension table).
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (septet after ESC, character).
const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

pub const ESC: u8 = 0x1B;

/// How a message is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 default alphabet (SMPP data_coding 0).
    Gsm7,
    /// UCS-2 / UTF-16BE (SMPP data_coding 8).
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }
}

/// The septets of one character: one for the default alphabet, ESC + code for the extension
/// table, `None` when the character is not in GSM 03.38.
pub fn char_septets(c: char) -> Option<(u8, Option<u8>)> {
    if c == '\u{1B}' {
        return None;
    }
    if let Some(i) = BASIC.iter().position(|&b| b == c) {
        return Some((i as u8, None));
    }
    EXTENSION
        .iter()
        .find(|(_, e)| *e == c)
        .map(|(code, _)| (ESC, Some(*code)))
}

/// The encoding a text needs.
pub fn encoding_of(text: &str) -> Encoding {
    if text.chars().all(|c| char_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// The text as unpacked septets (one per byte), or `None` if it is not GSM 03.38.
pub fn to_septets(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let (a, b) = char_septets(c)?;
        out.push(a);
        if let Some(b) = b {
            out.push(b);
        }
    }
    Some(out)
}

/// Unpacked septets back to text; unknown escapes become a space (TS 23.038 says to show the
/// default character), stray high bits are dropped.
pub fn from_septets(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut it = septets.iter().map(|b| b & 0x7F);
    while let Some(s) = it.next() {
        if s == ESC {
            match it.next() {
                Some(code) => out.push(
                    EXTENSION
                        .iter()
                        .find(|(c, _)| *c == code)
                        .map(|(_, ch)| *ch)
                        .unwrap_or(' '),
                ),
                None => break,
            }
        } else {
            out.push(BASIC[s as usize]);
        }
    }
    out
}

/// UTF-16BE bytes of a text (UCS-2 on the wire; characters beyond the BMP as surrogate pairs).
pub fn to_ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// UTF-16BE bytes back to text (lossy: unpaired surrogates become U+FFFD; an odd last byte is
/// dropped).
pub fn from_ucs2(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_the_standards() {
        assert_eq!(char_septets('@'), Some((0x00, None)));
        assert_eq!(char_septets('A'), Some((0x41, None)));
        assert_eq!(char_septets('à'), Some((0x7F, None)));
        assert_eq!(char_septets('€'), Some((0x1B, Some(0x65))));
        assert_eq!(char_septets('{'), Some((0x1B, Some(0x28))));
        assert_eq!(char_septets('`'), None);
        assert_eq!(char_septets('\u{1B}'), None);
        // Every basic character is distinct (the table has no typo duplicates).
        let mut seen = std::collections::HashSet::new();
        assert!(BASIC.iter().all(|c| seen.insert(*c)));
    }

    #[test]
    fn encodings_and_round_trips() {
        assert_eq!(encoding_of("Hello, World! 123 @£$¥"), Encoding::Gsm7);
        assert_eq!(encoding_of("price: 5€ [ok] {x} ~|^\\"), Encoding::Gsm7);
        assert_eq!(encoding_of("naïve"), Encoding::Ucs2, "ï is not GSM");
        assert_eq!(encoding_of("hi 😀"), Encoding::Ucs2);
        assert_eq!(encoding_of("`"), Encoding::Ucs2);
        let t = "Ça coûte 5€ {promo}";
        assert_eq!(encoding_of(t), Encoding::Ucs2, "û is not GSM");
        let t = "Ça va? 5€ {promo} ÆØÅ ß ¿¡";
        let s = to_septets(t).unwrap();
        assert_eq!(s.len(), t.chars().count() + 3, "three extension characters");
        assert_eq!(from_septets(&s), t);
        let u = "héllo 😀 мир";
        assert_eq!(from_ucs2(&to_ucs2(u)), u);
        assert_eq!(to_ucs2("😀").len(), 4, "a surrogate pair");
        assert_eq!(from_septets(&[0x1B]), "", "a dangling escape is dropped");
        assert_eq!(from_septets(&[0x1B, 0x00, 0xC1]), " A");
    }
}
