//! `since` as people write it: a duration back from now (`1h`, `30m`, `2d`) or an RFC 3339
//! time with its offset (`2026-11-21T14:02:03Z`, `2026-11-21T15:02:03+01:00`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot parse {text:?}: expected a duration such as 1h, 30m or 2d, \
     or an RFC 3339 time such as 2026-11-21T14:02:03Z"
)]
pub struct SinceError {
    pub text: String,
}

/// The point in time `text` names, durations counting back from `now`.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        // Further back than the epoch means "everything".
        let since = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        return Ok(since.max(UNIX_EPOCH));
    }
    parse_timestamp(text).ok_or_else(|| SinceError { text: text.into() })
}

/// RFC 3339 with `Z` or a numeric offset. A time without either is refused rather than
/// guessed at: local time and UTC are both plausible readings.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (local, east_of_utc) = match text.strip_suffix(['Z', 'z']) {
        Some(local) => (local, 0i64),
        None => split_offset(text)?,
    };
    let as_if_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(east_of_utc.unsigned_abs());
    if east_of_utc >= 0 {
        as_if_utc.checked_sub(shift)
    } else {
        as_if_utc.checked_add(shift)
    }
}

/// `…+HH:MM` or `…-HH:MM` into the rest and the offset in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.len().checked_sub(6)?;
    let tail = text.as_bytes().get(at..)?;
    let sign = match tail[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |pair: &[u8]| -> Option<i64> {
        pair.iter().try_fold(0, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let (hours, minutes) = (digits(&tail[1..3])?, digits(&tail[4..6])?);
    if tail[3] != b':' || hours > 23 || minutes > 59 {
        return None;
    }
    // The tail is ASCII, so `at` is a character boundary.
    Some((&text[..at], sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = utc("2026-11-21T14:00:00Z");
        assert_eq!(parse_since("1h", now), Ok(utc("2026-11-21T13:00:00Z")));
        assert_eq!(parse_since("30m", now), Ok(utc("2026-11-21T13:30:00Z")));
        assert_eq!(parse_since(" 2d ", now), Ok(utc("2026-11-19T14:00:00Z")));
        assert_eq!(parse_since("1h 30m", now), Ok(utc("2026-11-21T12:30:00Z")));
        assert_eq!(parse_since("100000years", now), Ok(UNIX_EPOCH));
    }

    #[test]
    fn timestamps_need_a_zone() {
        let now = SystemTime::now();
        let expected = utc("2026-11-21T14:02:03Z");
        for text in [
            "2026-11-21T14:02:03Z",
            "2026-11-21T15:02:03+01:00",
            "2026-11-21T09:32:03-04:30",
            "2026-11-21T14:02:03.000Z",
        ] {
            assert_eq!(parse_since(text, now), Ok(expected), "{text}");
        }
        for text in [
            "2026-11-21T14:02:03",
            "2026-11-21",
            "yesterday",
            "",
            "1x",
            "2026-11-21T14:02:03+1:00",
            "2026-11-21T14:02:03+99:00",
            "é2026-11-21T14:02:03+01:0é",
        ] {
            let err = parse_since(text, now).unwrap_err();
            assert!(err.to_string().contains("RFC 3339"), "{text}: {err}");
        }
    }
}
