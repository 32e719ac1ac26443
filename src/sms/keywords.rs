//! Compliance keywords in an inbound message (CTIA / carrier rules as the platform document's
//! "SMS Opt-Out" section lists them): the whole message, in any case, with surrounding spaces
//! and punctuation, is one keyword. Pure.

/// What an inbound message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPT OUT / OPTOUT: add the sender to
    /// `sms_optouts`, confirm once.
    Stop,
    /// START, UNSTOP, YES: remove it, confirm.
    Start,
    /// HELP, INFO: send the help text.
    Help,
}

const STOP: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
    "OPT-OUT",
];
const START: &[&str] = &["START", "UNSTOP", "YES"];
const HELP: &[&str] = &["HELP", "INFO"];

/// The keyword a message is, if it is one. "Stop." and " stop!! " are STOP; "please stop
/// calling" is not a keyword (it is a message for a person to read).
pub fn classify(text: &str) -> Option<Keyword> {
    let t: String = text
        .trim_matches(|c: char| {
            c.is_whitespace() || c.is_ascii_punctuation() || c == '¡' || c == '¿'
        })
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    if t.is_empty() || t.len() > 16 {
        return None;
    }
    if STOP.contains(&t.as_str()) {
        Some(Keyword::Stop)
    } else if START.contains(&t.as_str()) {
        Some(Keyword::Start)
    } else if HELP.contains(&t.as_str()) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// Who the confirmations speak for (config: brand name and a contact, e.g. a web address or
/// phone number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    pub name: String,
    pub contact: String,
}

/// The one confirmation a keyword gets.
pub fn reply(k: Keyword, b: &Brand) -> String {
    match k {
        Keyword::Stop => format!(
            "{}: You are unsubscribed and will get no more messages. Reply START to resubscribe.",
            b.name
        ),
        Keyword::Start => format!(
            "{}: You are subscribed again. Msg & data rates may apply. Reply HELP for help, STOP to opt out.",
            b.name
        ),
        Keyword::Help => format!(
            "{}: Help at {}. Msg & data rates may apply. Reply STOP to opt out.",
            b.name, b.contact
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_say_what_carriers_require_and_fit_one_part() {
        let b = Brand {
            name: "Acme Support".into(),
            contact: "acme.example/help or +1 555 010 0000".into(),
        };
        let help = reply(Keyword::Help, &b);
        assert!(
            help.contains("Reply STOP to opt out") && help.contains("Msg & data rates may apply")
        );
        assert!(help.contains(&b.contact));
        assert!(reply(Keyword::Stop, &b).contains("START"));
        for k in [Keyword::Stop, Keyword::Start, Keyword::Help] {
            let s = crate::sms::segment::segment(&reply(k, &b)).unwrap();
            assert_eq!(s.encoding, crate::sms::encoding::Encoding::Gsm7, "{k:?}");
            assert_eq!(s.parts.len(), 1, "{k:?}: one part");
        }
    }

    #[test]
    fn keywords_in_any_case_with_spaces_and_punctuation() {
        for s in [
            "STOP",
            "stop",
            " Stop. ",
            "STOP!!",
            "stopall",
            "Unsubscribe",
            "cancel",
            "END",
            "quit",
            "revoke",
            "opt out",
            "OPT  OUT",
            "Opt-Out",
            "optout",
            "\tSTOP\n",
            "...stop...",
        ] {
            assert_eq!(classify(s), Some(Keyword::Stop), "{s:?}");
        }
        for s in ["START", "start", "Unstop", "yes", "YES!"] {
            assert_eq!(classify(s), Some(Keyword::Start), "{s:?}");
        }
        for s in ["HELP", "help?", "Info", " info "] {
            assert_eq!(classify(s), Some(Keyword::Help), "{s:?}");
        }
        for s in [
            "",
            "   ",
            "please stop",
            "stop it",
            "STOPP",
            "yes please",
            "helpful",
            "opt",
            "s t o p",
            "STOP STOP",
            "ＳＴＯＰ",
        ] {
            assert_eq!(classify(s), None, "{s:?}");
        }
    }
}
