//! The in-process daily schedule of `esg run` (without `--once`): a run of each business date
//! at a local wall-clock time (05:00 America/Chicago by default), correct across daylight-saving
//! changes.
//!
//! Guarantee: at most one daily run per business date is *started* by the schedule: a date is
//! due once its local fire time has passed and no run of it was started by this process; a
//! process restarted after the fire time (05:30, say) finds the date due again and resumes the
//! run already started for it rather than starting a second one (the pipeline resumes or reports
//! a run of the same date). Time comes from an injected clock and sleeps from an injected
//! sleeper, so the tests walk over the March and November transitions in no time.
//!
//! Limit: a fire time that falls in a spring-forward gap (02:30 on the March change, say) fires
//! at the first instant after the gap; one in the repeated hour of a fall-back fires at its
//! first occurrence. 05:00 in Chicago is never in either.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A daily wall-clock time in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub at: NaiveTime,
    pub tz: Tz,
}

impl Schedule {
    pub fn new(at: NaiveTime, tz: Tz) -> Self {
        Schedule { at, tz }
    }

    /// The instant the run of `date` is due: `at` on that local date.
    pub fn fire_time(&self, date: NaiveDate) -> DateTime<Utc> {
        let local = date.and_time(self.at);
        match self.tz.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            chrono::LocalResult::None => {
                // In a spring-forward gap: the first whole minute that exists after it.
                let mut probe = local;
                loop {
                    probe += ChronoDuration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                        return t.with_timezone(&Utc);
                    }
                }
            }
        }
    }

    /// The business date of `now` in the schedule's time zone.
    pub fn date_of(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.tz).date_naive()
    }

    /// The date due now, if any: today's, once its fire time has passed and unless it was
    /// already started (`last_started`).
    pub fn due(&self, now: DateTime<Utc>, last_started: Option<NaiveDate>) -> Option<NaiveDate> {
        let today = self.date_of(now);
        let already = last_started.is_some_and(|d| d >= today);
        (now >= self.fire_time(today) && !already).then_some(today)
    }

    /// The next fire time strictly after `now`, with its business date.
    pub fn next_after(&self, now: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
        let today = self.date_of(now);
        let fire = self.fire_time(today);
        if fire > now {
            return (today, fire);
        }
        let tomorrow = today.succ_opt().unwrap_or(today);
        (tomorrow, self.fire_time(tomorrow))
    }
}

/// Runs `run(date)` for every business date as it comes due, until `shutdown`. Sleeps in steps
/// of at most `max_nap`, so a clock that jumps (suspend, NTP) is noticed. A run that fails is
/// logged and not retried by the schedule until the next date (the operator's re-run resumes
/// it); its date counts as started.
pub async fn run_daily<C, S, SF, R, RF>(
    schedule: Schedule,
    clock: C,
    sleep: S,
    max_nap: Duration,
    shutdown: CancellationToken,
    mut run: R,
) where
    C: Fn() -> DateTime<Utc>,
    S: Fn(Duration) -> SF,
    SF: Future<Output = ()>,
    R: FnMut(NaiveDate) -> RF,
    RF: Future<Output = anyhow::Result<()>>,
{
    let mut last_started: Option<NaiveDate> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = clock();
        if let Some(date) = schedule.due(now, last_started) {
            last_started = Some(date);
            tracing::info!(business_date = %date, "scheduled run starts");
            if let Err(e) = run(date).await {
                tracing::error!(business_date = %date, error = format!("{e:#}"), "scheduled run failed");
            }
            continue;
        }
        let (date, fire) = schedule.next_after(now);
        let wait = (fire - now).to_std().unwrap_or_default().min(max_nap);
        tracing::debug!(next_business_date = %date, next_run_at = %fire, "waiting for the next run");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn chicago_five() -> Schedule {
        Schedule::new(
            NaiveTime::from_hms_opt(5, 0, 0).expect("time"),
            chrono_tz::America::Chicago,
        )
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("utc time")
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn five_in_chicago_is_eleven_utc_in_winter_and_ten_in_summer() {
        let s = chicago_five();
        // 2026: DST starts Sunday 8 March, ends Sunday 1 November.
        assert_eq!(s.fire_time(d("2026-03-07")), utc("2026-03-07T11:00:00Z"));
        assert_eq!(s.fire_time(d("2026-03-08")), utc("2026-03-08T10:00:00Z"));
        assert_eq!(s.fire_time(d("2026-03-09")), utc("2026-03-09T10:00:00Z"));
        assert_eq!(s.fire_time(d("2026-10-31")), utc("2026-10-31T10:00:00Z"));
        assert_eq!(s.fire_time(d("2026-11-01")), utc("2026-11-01T11:00:00Z"));
        assert_eq!(s.fire_time(d("2026-11-02")), utc("2026-11-02T11:00:00Z"));
    }

    #[test]
    fn times_in_the_gap_or_the_repeated_hour_fire_once() {
        let tz = chrono_tz::America::Chicago;
        let gap = Schedule::new(NaiveTime::from_hms_opt(2, 30, 0).expect("t"), tz);
        // 02:30 does not exist on 8 March: the first minute after the gap, 03:00 CDT.
        assert_eq!(gap.fire_time(d("2026-03-08")), utc("2026-03-08T08:00:00Z"));
        let repeated = Schedule::new(NaiveTime::from_hms_opt(1, 30, 0).expect("t"), tz);
        // 01:30 happens twice on 1 November: the first, still CDT.
        assert_eq!(
            repeated.fire_time(d("2026-11-01")),
            utc("2026-11-01T06:30:00Z")
        );
    }

    #[test]
    fn a_date_is_due_once_after_its_fire_time() {
        let s = chicago_five();
        assert_eq!(s.due(utc("2026-11-23T10:59:59Z"), None), None);
        assert_eq!(
            s.due(utc("2026-11-23T11:00:00Z"), None),
            Some(d("2026-11-23"))
        );
        // A restart at 05:30 finds the date due (and resumes the run of that date)...
        assert_eq!(
            s.due(utc("2026-11-23T11:30:00Z"), None),
            Some(d("2026-11-23"))
        );
        // ...but a process that started it does not start it again.
        assert_eq!(
            s.due(utc("2026-11-23T11:30:00Z"), Some(d("2026-11-23"))),
            None
        );
        assert_eq!(
            s.next_after(utc("2026-11-23T11:30:00Z")),
            (d("2026-11-24"), utc("2026-11-24T11:00:00Z"))
        );
    }

    /// A fake clock that the fake sleeper moves forward.
    #[derive(Clone)]
    struct FakeTime(Arc<Mutex<DateTime<Utc>>>);

    impl FakeTime {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().expect("clock")
        }
        fn advance(&self, by: Duration) {
            let mut t = self.0.lock().expect("clock");
            *t += ChronoDuration::from_std(by).expect("duration");
        }
    }

    async fn runs_between(start: &str, end: &str) -> Vec<(NaiveDate, DateTime<Utc>)> {
        let time = FakeTime(Arc::new(Mutex::new(utc(start))));
        let end = utc(end);
        let shutdown = CancellationToken::new();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (t1, t2, t3) = (time.clone(), time.clone(), time.clone());
        let (stop, stop2) = (shutdown.clone(), shutdown.clone());
        let seen = runs.clone();
        run_daily(
            chicago_five(),
            move || t1.now(),
            move |d| {
                t2.advance(d);
                if t2.now() >= end {
                    stop.cancel();
                }
                async {}
            },
            Duration::from_secs(3600),
            shutdown,
            move |date| {
                seen.lock().expect("runs").push((date, t3.now()));
                // A run takes 40 minutes of the fake clock.
                t3.advance(Duration::from_secs(2400));
                if t3.now() >= end {
                    stop2.cancel();
                }
                async { Ok(()) }
            },
        )
        .await;
        let out = runs.lock().expect("runs").clone();
        out
    }

    #[tokio::test]
    async fn over_the_march_change_every_day_runs_once_at_five_local() {
        let runs = runs_between("2026-03-06T06:00:00Z", "2026-03-11T12:00:00Z").await;
        let expected = [
            ("2026-03-06", "2026-03-06T11:00:00Z"),
            ("2026-03-07", "2026-03-07T11:00:00Z"),
            ("2026-03-08", "2026-03-08T10:00:00Z"),
            ("2026-03-09", "2026-03-09T10:00:00Z"),
            ("2026-03-10", "2026-03-10T10:00:00Z"),
            ("2026-03-11", "2026-03-11T10:00:00Z"),
        ];
        assert_eq!(runs.len(), expected.len(), "{runs:?}");
        for ((date, at), (ed, ea)) in runs.iter().zip(expected) {
            assert_eq!(*date, d(ed));
            // Naps are at most an hour, so a run starts within an hour of its time; here the
            // naps end exactly on the fire time.
            assert_eq!(*at, utc(ea), "{date}");
        }
    }

    #[tokio::test]
    async fn over_the_november_change_every_day_runs_once_at_five_local() {
        let runs = runs_between("2026-10-30T06:00:00Z", "2026-11-04T12:00:00Z").await;
        let dates: Vec<String> = runs.iter().map(|(d, _)| d.to_string()).collect();
        assert_eq!(
            dates,
            [
                "2026-10-30",
                "2026-10-31",
                "2026-11-01",
                "2026-11-02",
                "2026-11-03",
                "2026-11-04"
            ]
        );
        let at: Vec<DateTime<Utc>> = runs.iter().map(|(_, t)| *t).collect();
        assert_eq!(at[1], utc("2026-10-31T10:00:00Z"), "CDT");
        assert_eq!(at[2], utc("2026-11-01T11:00:00Z"), "CST from the change on");
        assert_eq!(at[3], utc("2026-11-02T11:00:00Z"));
    }

    #[tokio::test]
    async fn a_process_started_after_five_runs_today_once() {
        let runs = runs_between("2026-11-23T11:30:00Z", "2026-11-24T10:00:00Z").await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0], (d("2026-11-23"), utc("2026-11-23T11:30:00Z")));
    }
}
