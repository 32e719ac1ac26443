//! Session timers (RFC 4028) for a leg we answer: what the INVITE asked, what we answer, and
//! when the session is dead without a refresh. Pure: seconds in, decisions out.

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// The session interval in force for a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval_secs: u32,
    pub refresher: Refresher,
}

impl SessionTimer {
    /// Without a refresh (a re-INVITE or UPDATE) for this long the session is over: RFC 4028
    /// section 10, the interval minus min(32 s, a third of it).
    pub fn expiry_secs(&self) -> u32 {
        self.interval_secs - (self.interval_secs / 3).min(32)
    }

    /// The `Session-Expires` header value for our 2xx.
    pub fn header(&self) -> String {
        format!(
            "{};refresher={}",
            self.interval_secs,
            self.refresher.as_str()
        )
    }
}

/// A `Session-Expires` value: `1800;refresher=uac`.
pub fn parse_session_expires(v: &str) -> Option<(u32, Option<Refresher>)> {
    let mut parts = v.split(';');
    let secs = parts.next()?.trim().parse::<u32>().ok()?;
    let mut r = None;
    for p in parts {
        if let Some((k, val)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("refresher")
        {
            r = match val.trim().to_ascii_lowercase().as_str() {
                "uac" => Some(Refresher::Uac),
                "uas" => Some(Refresher::Uas),
                _ => None,
            };
        }
    }
    Some((secs, r))
}

/// Why a request's interval is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// 422 Session Interval Too Small, with our `Min-SE`.
    TooSmall { min_se: u32 },
}

/// Decide the session timer for an INVITE we answer. `requested` is its `Session-Expires`
/// (parsed), `uac_supports` whether its `Supported` lists `timer`. `ours` is our preferred
/// interval, `min_se` our minimum. Without a request, a UAC that supports timers still gets
/// ours (we refresh nothing: the UAC refreshes), and a UAC that does not gets none.
pub fn negotiate(
    requested: Option<(u32, Option<Refresher>)>,
    uac_supports: bool,
    ours: u32,
    min_se: u32,
) -> Result<Option<SessionTimer>, TimerError> {
    match requested {
        Some((secs, _)) if secs < min_se => Err(TimerError::TooSmall { min_se }),
        Some((secs, r)) => Ok(Some(SessionTimer {
            interval_secs: secs.min(ours.max(min_se)),
            // A UAC that does not support timers cannot refresh: we would have to; we leave the
            // refreshing to the UAC whenever it can, as a bridge that never re-INVITEs.
            refresher: match (r, uac_supports) {
                (Some(r), _) => r,
                (None, true) => Refresher::Uac,
                (None, false) => Refresher::Uas,
            },
        })),
        None if uac_supports => Ok(Some(SessionTimer {
            interval_secs: ours.max(min_se),
            refresher: Refresher::Uac,
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_expiry() {
        assert_eq!(
            parse_session_expires("1800;refresher=uac"),
            Some((1800, Some(Refresher::Uac)))
        );
        assert_eq!(parse_session_expires(" 90 "), Some((90, None)));
        assert_eq!(parse_session_expires("x"), None);
        let t = negotiate(Some((1800, None)), true, 1800, 90)
            .unwrap()
            .unwrap();
        assert_eq!(
            t,
            SessionTimer {
                interval_secs: 1800,
                refresher: Refresher::Uac
            }
        );
        assert_eq!(t.expiry_secs(), 1768);
        assert_eq!(t.header(), "1800;refresher=uac");
        // A long request is shortened to ours.
        let t = negotiate(Some((7200, Some(Refresher::Uas))), true, 1800, 90)
            .unwrap()
            .unwrap();
        assert_eq!((t.interval_secs, t.refresher), (1800, Refresher::Uas));
        // Short intervals: a third is taken off.
        let t = negotiate(Some((90, None)), true, 1800, 90)
            .unwrap()
            .unwrap();
        assert_eq!(t.expiry_secs(), 60);
        assert_eq!(
            negotiate(Some((60, None)), true, 1800, 90),
            Err(TimerError::TooSmall { min_se: 90 })
        );
        assert_eq!(negotiate(None, false, 1800, 90), Ok(None));
        assert_eq!(
            negotiate(None, true, 1800, 90)
                .unwrap()
                .unwrap()
                .interval_secs,
            1800
        );
    }
}
