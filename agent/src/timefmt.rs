//! Times and durations as people read them (CLI output, incident summaries): the wall clock of the host's time zone (UTC
//! in tests, so that they do not depend on the machine), with the date only when it is
//! not today.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Local,
    Utc,
}

/// A calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

/// Formats times relative to one "today".
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    zone: Zone,
    today: (i32, u32, u32),
}

impl Clock {
    pub fn new(zone: Zone, now: SystemTime) -> Self {
        let c = civil(zone, now);
        Self {
            zone,
            today: (c.year, c.month, c.day),
        }
    }

    /// `14:02:03`, or `2026-11-20` when not today: for columns.
    pub fn short(&self, time: SystemTime) -> String {
        let c = civil(self.zone, time);
        if self.is_today(&c) {
            hms(&c)
        } else {
            ymd(&c)
        }
    }

    /// `14:02:03`, or `2026-11-20 14:02:03` when not today.
    pub fn stamp(&self, time: SystemTime) -> String {
        let c = civil(self.zone, time);
        if self.is_today(&c) {
            hms(&c)
        } else {
            format!("{} {}", ymd(&c), hms(&c))
        }
    }

    /// `14:02:02.871`: for timelines, where the order within a second matters.
    pub fn precise(&self, time: SystemTime) -> String {
        let c = civil(self.zone, time);
        format!("{}.{:03}", hms(&c), c.millis)
    }

    fn is_today(&self, c: &Civil) -> bool {
        (c.year, c.month, c.day) == self.today
    }
}

fn hms(c: &Civil) -> String {
    format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second)
}

fn ymd(c: &Civil) -> String {
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

fn civil(zone: Zone, time: SystemTime) -> Civil {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = libc::time_t::try_from(since_epoch.as_secs()).unwrap_or(libc::time_t::MAX);
    // SAFETY: all-zero is a valid `tm` (integers and a null zone-name pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call. The `_r` variants are thread-safe;
    // `localtime_r` loads the time zone (TZ, /etc/localtime) on its first call.
    let converted = unsafe {
        match zone {
            Zone::Local => libc::localtime_r(&secs, &mut tm),
            Zone::Utc => libc::gmtime_r(&secs, &mut tm),
        }
    };
    if converted.is_null() {
        // Only for times beyond year 2^31; show the epoch rather than garbage.
        return civil(Zone::Utc, UNIX_EPOCH);
    }
    Civil {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        millis: since_epoch.subsec_millis(),
    }
}

/// `850 ms`, `6.2 s`, `3 min 12 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{} ms", d.as_millis()),
        1..=59 => format!("{:.1} s", d.as_secs_f64()),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn the_date_shows_only_when_not_today() {
        let clock = Clock::new(Zone::Utc, utc("2026-11-21T18:00:00Z"));
        assert_eq!(clock.short(utc("2026-11-21T14:02:03.871Z")), "14:02:03");
        assert_eq!(clock.short(utc("2026-11-20T23:59:59Z")), "2026-11-20");
        assert_eq!(
            clock.stamp(utc("2026-11-20T23:59:59Z")),
            "2026-11-20 23:59:59"
        );
        assert_eq!(clock.stamp(utc("2026-11-21T00:00:00Z")), "00:00:00");
        assert_eq!(
            clock.precise(utc("2026-11-21T14:02:02.871Z")),
            "14:02:02.871"
        );
    }

    #[test]
    fn local_time_converts() {
        // Whatever the zone, the minutes and seconds agree with UTC for whole-hour zones;
        // this only checks the call works and is consistent.
        let clock = Clock::new(Zone::Local, SystemTime::now());
        assert_eq!(clock.short(SystemTime::now()).len(), 8);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(6_200)), "6.2 s");
        assert_eq!(duration(Duration::from_secs(192)), "3 min 12 s");
        assert_eq!(duration(Duration::from_secs(7_500)), "2 h 5 min");
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3 d 4 h"
        );
    }
}
