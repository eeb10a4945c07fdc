//! When a source syncs: cron in an IANA time zone, a manual tag, or continuously.
//!
//! VolSync's semantics: the next sync is the first schedule time strictly after the previous
//! run's completion, so times that pass while a run is in flight are coalesced, never replayed.

use std::{collections::BTreeMap, fmt, sync::Arc};

use chrono::{DateTime, Duration, Utc};
pub use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use sha2::{Digest, Sha256};

use crate::SourceKey;

/// A parsed 5-field cron schedule in a time zone, with a stable per-source jitter.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Shared by every schedule of the same pattern that went through one [`CronCache`].
    cron: Arc<Cron>,
    tz: Tz,
    /// The fixed delay this source adds to every cron time (`0 <= offset < jitter`).
    offset: Duration,
}

/// Why a schedule cannot be used; the field it concerns is named by the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("not a valid 5-field cron expression or @descriptor: {0}")]
    Cron(String),
    /// The time zone is not in the IANA database.
    #[error("unknown IANA time zone {}", crate::validate::quoted(.0))]
    TimeZone(String),
}

/// The longest cron expression admitted.
const MAX_EXPR_LEN: usize = 253;

const DESCRIPTORS: [&str; 6] = [
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
];

impl Schedule {
    /// Parses `expr` (5 fields, or one of VolSync's `@` descriptors) in time zone `tz`
    /// (empty: UTC). `jitter` bounds a delay derived from `key`, the same on every restart.
    pub fn parse(
        expr: &str,
        tz: &str,
        jitter: Duration,
        key: &SourceKey,
    ) -> Result<Self, ScheduleError> {
        let schedule = Self::parse_pattern(expr, tz, jitter, key)?;
        // Every pattern that fires at all fires within one 400-year Gregorian cycle of any
        // instant: one that has no time after a fixed reference can never fire.
        let reference = DateTime::<Utc>::UNIX_EPOCH;
        if schedule.next_after(reference).is_none() {
            return Err(ScheduleError::Cron(format!(
                "{:?} never fires (no such date, e.g. February 31)",
                expr.trim()
            )));
        }
        Ok(schedule)
    }

    /// Parses like [`Schedule::parse`] without refusing a pattern that never fires (a stored
    /// source from a version that admitted one loads, and simply never runs).
    pub fn parse_pattern(
        expr: &str,
        tz: &str,
        jitter: Duration,
        key: &SourceKey,
    ) -> Result<Self, ScheduleError> {
        let tz = parse_time_zone(tz)?;
        let trimmed = expr.trim();
        if trimmed.len() > MAX_EXPR_LEN {
            return Err(ScheduleError::Cron(format!(
                "at most {MAX_EXPR_LEN} characters, got {}",
                trimmed.len()
            )));
        }
        if trimmed.starts_with('@') && !DESCRIPTORS.contains(&trimmed.to_ascii_lowercase().as_str())
        {
            return Err(ScheduleError::Cron(format!(
                "unknown descriptor {trimmed:?} (use one of {})",
                DESCRIPTORS.join(" ")
            )));
        }
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(ScheduleError::Cron(format!(
                "{trimmed:?} has {} fields, want 5 (minute hour day-of-month month day-of-week)",
                trimmed.split_whitespace().count()
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| ScheduleError::Cron(format!("{trimmed:?}: {e}")))?;
        Ok(Self {
            cron: Arc::new(cron),
            tz,
            offset: jitter_offset(key, jitter),
        })
    }

    /// The first schedule time strictly after `t`, jitter included; `None` when there is
    /// none within chrono's range of dates (`t` near its end, or a pattern that never fires).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let base = t.checked_sub_signed(self.offset)?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&base, false).ok()?;
        next.with_timezone(&Utc).checked_add_signed(self.offset)
    }

    /// The next `n` schedule times strictly after `t`.
    pub fn preview(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(t), |&prev| self.next_after(prev))
            .take(n)
            .collect()
    }

    /// The schedule's time zone.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The stable jitter delay of this source.
    pub fn offset(&self) -> Duration {
        self.offset
    }
}

/// Parsed cron patterns, shared by the schedules that use the same one: a parsed pattern is
/// a few kilobytes (a bit field per value of each field), a fleet uses a handful, and a
/// scheduler holds one schedule per source.
#[derive(Debug, Default)]
pub struct CronCache {
    crons: BTreeMap<String, Arc<Cron>>,
    /// How many patterns were left after the last sweep of unused ones.
    kept: usize,
}

/// The number of patterns a cache holds before it first drops unused ones.
const CRON_CACHE_SWEEP: usize = 64;

impl CronCache {
    /// Makes `schedule` use the cache's parse of its pattern, keeping this one if it is new.
    /// Patterns no schedule uses any more are dropped once the cache has doubled.
    pub fn share(&mut self, schedule: &mut Schedule) {
        match self.crons.get(schedule.cron.as_str()).cloned() {
            Some(cron) => schedule.cron = cron,
            None => {
                self.crons
                    .insert(schedule.cron.as_str().to_owned(), schedule.cron.clone());
            }
        }
        if self.crons.len() > self.kept.max(CRON_CACHE_SWEEP).saturating_mul(2) {
            self.crons.retain(|_, c| Arc::strong_count(c) > 1);
            self.kept = self.crons.len();
        }
    }

    /// How many distinct patterns it holds.
    pub fn len(&self) -> usize {
        self.crons.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.crons.is_empty()
    }
}

/// Parses an IANA time zone name; empty means UTC.
pub fn parse_time_zone(tz: &str) -> Result<Tz, ScheduleError> {
    if tz.is_empty() {
        return Ok(Tz::UTC);
    }
    tz.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(tz.to_owned()))
}

/// A delay in `[0, jitter)` derived from the source's identity, whole seconds.
fn jitter_offset(key: &SourceKey, jitter: Duration) -> Duration {
    let bound = jitter.num_seconds();
    if bound <= 0 {
        return Duration::zero();
    }
    let digest = Sha256::digest(format!("{}/{}", key.namespace, key.name).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from_be_bytes(first) % bound.unsigned_abs();
    // n < bound, a valid number of seconds.
    Duration::try_seconds(i64::try_from(n).unwrap_or(0)).unwrap_or_else(Duration::zero)
}

/// What starts a source's runs.
#[derive(Clone, Debug)]
pub enum SyncTrigger {
    /// Runs at cron times.
    Schedule(Box<Schedule>),
    /// Runs when the tag differs from `lastManualSync`.
    Manual(String),
    /// The next run starts as soon as the previous one is cleaned up.
    Continuous,
}

impl fmt::Display for SyncTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Schedule(s) => write!(f, "schedule {} ({})", s.cron.pattern, s.tz),
            Self::Manual(tag) => write!(f, "manual {tag:?}"),
            Self::Continuous => f.write_str("continuous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key() -> SourceKey {
        SourceKey::new("ns", "db")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz, Duration::zero(), &key()).unwrap()
    }

    #[test]
    fn next_time_is_strictly_after_the_given_time() {
        let s = sched("*/15 * * * *", "");
        assert_eq!(
            s.next_after(utc("2026-01-01T10:15:00Z")),
            Some(utc("2026-01-01T10:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T10:14:59Z")),
            Some(utc("2026-01-01T10:15:00Z"))
        );
    }

    #[test]
    fn descriptors_names_ranges_lists_and_steps_are_accepted() {
        let cases = [
            ("@hourly", "2026-01-01T10:20:00Z", "2026-01-01T11:00:00Z"),
            ("@daily", "2026-01-01T10:20:00Z", "2026-01-02T00:00:00Z"),
            ("@weekly", "2026-01-01T10:20:00Z", "2026-01-04T00:00:00Z"), // a Sunday
            ("@monthly", "2026-01-01T10:20:00Z", "2026-02-01T00:00:00Z"),
            ("@yearly", "2026-01-01T10:20:00Z", "2027-01-01T00:00:00Z"),
            ("@annually", "2026-01-01T10:20:00Z", "2027-01-01T00:00:00Z"),
            (
                "0 3 * JAN-MAR MON",
                "2026-01-01T10:20:00Z",
                "2026-01-05T03:00:00Z",
            ),
            (
                "0 1,13 * * *",
                "2026-01-01T10:20:00Z",
                "2026-01-01T13:00:00Z",
            ),
            (
                "10-20/5 * * * *",
                "2026-01-01T10:16:00Z",
                "2026-01-01T10:20:00Z",
            ),
            (
                "0 0 1 * sun",
                "2026-01-01T10:20:00Z",
                "2026-01-04T00:00:00Z",
            ), // dom OR dow
            (
                "0 0 1 jun sun",
                "2026-01-01T10:20:00Z",
                "2026-06-01T00:00:00Z",
            ),
        ];
        for (expr, after, want) in cases {
            assert_eq!(
                sched(expr, "").next_after(utc(after)),
                Some(utc(want)),
                "{expr}"
            );
        }
    }

    #[test]
    fn invalid_cron_and_unknown_descriptors_and_seconds_fields_are_refused() {
        for expr in [
            "not a cron",
            "",
            "61 * * * *",
            "* * * *",
            "0 * * * * *",
            "@every5m",
            "@reboot",
        ] {
            let err = Schedule::parse(expr, "", Duration::zero(), &key()).unwrap_err();
            assert!(matches!(err, ScheduleError::Cron(_)), "{expr}: {err:?}");
        }
    }

    #[test]
    fn a_pattern_that_can_never_fire_is_refused() {
        for expr in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            let err = Schedule::parse(expr, "", Duration::zero(), &key()).unwrap_err();
            assert!(
                matches!(&err, ScheduleError::Cron(m) if m.contains("never fires")),
                "{expr}: {err:?}"
            );
        }
        // Rare is not never: February 29 fires in leap years.
        let leap = sched("0 0 29 2 *", "");
        assert_eq!(
            leap.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn times_near_the_ends_of_the_calendar_give_no_time_instead_of_overflowing() {
        let s = Schedule::parse("@hourly", "", Duration::days(1), &key()).unwrap();
        assert!(s.offset() > Duration::zero());
        assert_eq!(s.next_after(DateTime::<Utc>::MIN_UTC), None);
        assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert!(s.preview(DateTime::<Utc>::MAX_UTC, 5).is_empty());
    }

    #[test]
    fn unknown_time_zones_are_refused() {
        let err = Schedule::parse("@daily", "Mars/Olympus", Duration::zero(), &key()).unwrap_err();
        assert_eq!(err, ScheduleError::TimeZone("Mars/Olympus".into()));
    }

    #[test]
    fn a_time_zone_follows_daylight_saving_time() {
        let s = sched("0 9 * * *", "Europe/Berlin");
        // Winter: CET is UTC+1.
        assert_eq!(
            s.next_after(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T08:00:00Z"))
        );
        // Summer: CEST is UTC+2.
        assert_eq!(
            s.next_after(utc("2026-07-10T00:00:00Z")),
            Some(utc("2026-07-10T07:00:00Z"))
        );
        // Across the spring change (2026-03-29): one run a day, nine o'clock local each time.
        let times = s.preview(utc("2026-03-27T12:00:00Z"), 4);
        let local: Vec<String> = times
            .iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Berlin)
                    .format("%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(local, ["28 09:00", "29 09:00", "30 09:00", "31 09:00"]);
    }

    #[test]
    fn a_time_skipped_by_the_spring_change_does_not_stall_the_schedule() {
        // 02:30 does not exist in New York on 2026-03-08.
        let s = sched("30 2 * * *", "America/New_York");
        let times = s.preview(utc("2026-03-07T12:00:00Z"), 3);
        assert_eq!(times.len(), 3);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        // The missing 02:30 runs at the first instant after the gap (03:00 EDT), as cron does.
        assert_eq!(times[0], utc("2026-03-08T07:00:00Z"));
        assert_eq!(times[1], utc("2026-03-09T06:30:00Z"));
        assert_eq!(times[2], utc("2026-03-10T06:30:00Z"));
    }

    #[test]
    fn jitter_is_stable_per_source_and_within_its_bound() {
        let jitter = Duration::minutes(10);
        let a1 = Schedule::parse("@hourly", "", jitter, &SourceKey::new("ns", "a")).unwrap();
        let a2 = Schedule::parse("@hourly", "", jitter, &SourceKey::new("ns", "a")).unwrap();
        assert_eq!(a1.offset(), a2.offset());
        let offsets: std::collections::BTreeSet<i64> = (0..20)
            .map(|i| {
                Schedule::parse(
                    "@hourly",
                    "",
                    jitter,
                    &SourceKey::new("ns", &format!("s{i}")),
                )
                .unwrap()
                .offset()
                .num_seconds()
            })
            .collect();
        assert!(offsets.iter().all(|&o| (0..600).contains(&o)));
        assert!(offsets.len() > 10, "offsets should spread: {offsets:?}");
        let t = a1.next_after(utc("2026-01-01T10:20:00Z")).unwrap();
        assert_eq!(t, utc("2026-01-01T11:00:00Z") + a1.offset());
        // Strictly after still holds with the offset.
        assert!(a1.next_after(t).unwrap() > t);
    }

    #[test]
    fn schedules_of_one_pattern_share_its_parse_and_keep_their_own_jitter_and_zone() {
        let mut cache = CronCache::default();
        let parse = |name: &str, expr: &str, tz: &str| {
            Schedule::parse(
                expr,
                tz,
                Duration::minutes(30),
                &SourceKey::new("apps", name),
            )
            .unwrap()
        };
        let (mut a, mut b, mut c) = (
            parse("a", "0 3 * * *", "UTC"),
            parse("b", "0 3 * * *", "Europe/Paris"),
            parse("c", "@hourly", "UTC"),
        );
        let alone = parse("b", "0 3 * * *", "Europe/Paris");
        for s in [&mut a, &mut b, &mut c] {
            cache.share(s);
        }
        assert!(Arc::ptr_eq(&a.cron, &b.cron));
        assert!(!Arc::ptr_eq(&a.cron, &c.cron));
        assert_eq!(cache.len(), 2);
        // Sharing changes no time: b's zone and jitter are its own.
        let t = utc("2026-03-01T00:00:00Z");
        assert_eq!(b.preview(t, 5), alone.preview(t, 5));
        assert_ne!(a.next_after(t), b.next_after(t));
    }

    #[test]
    fn a_cron_cache_drops_patterns_no_schedule_uses_once_it_has_doubled() {
        let mut cache = CronCache::default();
        let key = SourceKey::new("apps", "a");
        let mut kept = Schedule::parse("5 4 * * *", "", Duration::zero(), &key).unwrap();
        cache.share(&mut kept);
        for minute in 0..60 {
            for hour in 0..3 {
                let mut s = Schedule::parse(
                    &format!("{minute} {hour} * * *"),
                    "",
                    Duration::zero(),
                    &key,
                )
                .unwrap();
                cache.share(&mut s);
            }
        }
        // 181 patterns went through it, each dropped as soon as its schedule was: at most
        // twice the sweep threshold remain, and the one still used is among them.
        assert!(cache.len() <= 2 * CRON_CACHE_SWEEP + 1, "{}", cache.len());
        assert!(cache.crons.contains_key("5 4 * * *"));
    }

    #[test]
    fn preview_lists_increasing_times() {
        let s = sched("0 */6 * * *", "UTC");
        let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 1, 0, 0).unwrap();
        assert_eq!(
            s.preview(t0, 3),
            vec![
                utc("2026-05-01T06:00:00Z"),
                utc("2026-05-01T12:00:00Z"),
                utc("2026-05-01T18:00:00Z")
            ]
        );
    }
}
