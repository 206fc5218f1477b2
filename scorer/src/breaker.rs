//! The scorer's circuit breaker: stops scoring when the calls fail in a way that says no call
//! can succeed as things stand, instead of spending the vendor's quota on every account of the
//! day and writing each one `Failed`.
//!
//! The breaker counts accounts in a row (in the order their calls end) whose call ended with an
//! authentication failure ([`ApiFailure::breaker_cause`](crate::api::ApiFailure::breaker_cause):
//! the API rejected fresh tokens, the token endpoint refused the credentials or was down). Any
//! other ending, a success, a `Partial` or a failure of the account itself, ends the streak.
//! When the streak reaches its threshold (`esg_api.breaker_consecutive`) the breaker opens: the
//! scorer stops with [`ScorerError::Breaker`](crate::ScorerError::Breaker).
//!
//! Guarantee: an account of the streak has no `Failed` score written while the streak lasts:
//! its outcome is held back. When the breaker opens, the held accounts, the calls in flight and
//! the events not started are all dropped: they have no score and their offsets are not
//! committed, so the run resumes with them once the cause is fixed. When the streak ends (or
//! nothing that could extend it is running), the held accounts are released and written
//! `Failed`, which is what they are. Limit: the threshold counts accounts, not time, and a run
//! with fewer accounts than the threshold never opens it (its accounts end `Failed`, and the
//! failure-ratio alert speaks for them). Memory: at most `threshold` outcomes are held.

use crate::api::BreakerCause;

/// What opened the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The cause of the failure that reached the threshold.
    pub cause: BreakerCause,
    /// Accounts in a row that failed so (the threshold).
    pub consecutive: u32,
    /// The last failure, `CODE: message` (never a secret).
    pub last_error: String,
}

/// Counts the streak and holds back its outcomes (`T`: one account's finished work).
#[derive(Debug)]
pub(crate) struct Breaker<T> {
    threshold: u32,
    streak: u32,
    held: Vec<T>,
}

impl<T> Breaker<T> {
    /// A closed breaker that opens after `threshold` (at least 1) accounts in a row.
    pub(crate) fn new(threshold: u32) -> Self {
        Breaker {
            threshold: threshold.max(1),
            streak: 0,
            held: Vec::new(),
        }
    }

    /// An account whose call ended with an authentication failure: held back. When it makes
    /// `threshold` in a row the breaker opens: the held outcomes are dropped (they stay
    /// pending) and the reason is returned.
    pub(crate) fn hold(&mut self, item: T, cause: BreakerCause, error: String) -> Option<Opened> {
        self.streak += 1;
        if self.streak >= self.threshold {
            self.held.clear();
            return Some(Opened {
                cause,
                consecutive: self.streak,
                last_error: error,
            });
        }
        self.held.push(item);
        None
    }

    /// Any other ending: the streak is over; the held outcomes are returned, to be written as
    /// the failures they are.
    pub(crate) fn pass(&mut self) -> Vec<T> {
        self.streak = 0;
        std::mem::take(&mut self.held)
    }

    /// Returns the held outcomes without ending the streak: used when no call is in flight or
    /// waiting, so that the last accounts of a run are not held back until its deadline.
    pub(crate) fn release(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held)
    }

    /// Outcomes held back now.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Accounts in the current streak.
    #[cfg(test)]
    fn streak(&self) -> u32 {
        self.streak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_drops_what_it_held() {
        let mut b = Breaker::new(3);
        assert_eq!(b.hold(1, BreakerCause::TokensRejected, "a".into()), None);
        assert_eq!(b.hold(2, BreakerCause::TokensRejected, "b".into()), None);
        assert_eq!(b.held(), 2);
        let opened = b
            .hold(
                3,
                BreakerCause::TokenEndpointDown,
                "AUTH_UNAVAILABLE: down".into(),
            )
            .expect("opens");
        assert_eq!(
            opened,
            Opened {
                cause: BreakerCause::TokenEndpointDown,
                consecutive: 3,
                last_error: "AUTH_UNAVAILABLE: down".into(),
            }
        );
        assert_eq!(b.held(), 0, "held outcomes stay pending, unwritten");
    }

    #[test]
    fn any_other_ending_resets_the_streak_and_releases_the_held() {
        let mut b = Breaker::new(3);
        b.hold(1, BreakerCause::CredentialsRefused, String::new());
        b.hold(2, BreakerCause::CredentialsRefused, String::new());
        assert_eq!(b.pass(), vec![1, 2]);
        assert_eq!(b.streak(), 0);
        assert_eq!(
            b.hold(3, BreakerCause::CredentialsRefused, String::new()),
            None
        );
        assert_eq!(
            b.hold(4, BreakerCause::CredentialsRefused, String::new()),
            None
        );
        assert_eq!(b.pass(), vec![3, 4]);
    }

    #[test]
    fn release_keeps_counting() {
        let mut b = Breaker::new(3);
        b.hold(1, BreakerCause::TokensRejected, String::new());
        b.hold(2, BreakerCause::TokensRejected, String::new());
        assert_eq!(b.release(), vec![1, 2]);
        assert_eq!(b.streak(), 2);
        assert!(b
            .hold(3, BreakerCause::TokensRejected, String::new())
            .is_some());
    }

    #[test]
    fn a_threshold_of_zero_is_one() {
        let mut b = Breaker::new(0);
        assert!(b
            .hold((), BreakerCause::TokensRejected, String::new())
            .is_some());
    }
}
