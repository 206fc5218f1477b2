//! The truth of a day: what the account system holds for every account and what the vendor
//! rates it on a date, for a test that judges a day's file without trusting the job
//! ([`crate::SimHandle::truth`], `GET /_sim/truth?asOf=YYYY-MM-DD`).
//!
//! It is computed from the seed and the overlay of changes exactly as the listing and the ESG
//! API compute their answers, faults included: an account whose answer breaks the contract is
//! [`Rating::OutOfContract`], one the vendor refuses is [`Rating::Refused`]. Per-call faults
//! (transient errors, stalls) are not part of the truth: they are in [`crate::Answers`].
//! Every account is in one answer, so it is for test data sets, not a million accounts.

use chrono::NaiveDate;

use crate::accounts::{account_id, Status};
use crate::names::account_name;
use crate::state::State;

/// Every account of the account system now, and the vendor's rating of each on a date.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Truth {
    /// How often the vendor re-rated every holding ([`crate::SimHandle::rerate`]).
    pub rerate_epoch: u64,
    /// Every account, in id order, whatever its status.
    pub accounts: Vec<AccountTruth>,
}

/// One account as the account system holds it, and as the vendor rates it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountTruth {
    pub account_id: String,
    /// The name the listing gives it (a renamed account's new name).
    pub account_name: String,
    pub status: Status,
    /// The record version the listing gives it.
    pub version: u64,
    /// The version of its holdings (grown by a touch), which its scores depend on.
    pub holdings_version: u64,
    /// What the vendor answers for it on the date asked.
    pub rating: Rating,
}

/// What the vendor answers for an account on a date, leaving out per-call faults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rating {
    /// An analysis: each score as the exact decimal text the answer carries (`"72.345"`),
    /// `None` where the answer has `null`; the primary focus as pillar (`ENVIRONMENTAL`, ...)
    /// and score.
    Analysis {
        analysis_date: NaiveDate,
        overall: Option<String>,
        environmental: Option<String>,
        social: Option<String>,
        governance: Option<String>,
        primary_focus: Option<(String, String)>,
    },
    /// Always answered 404 or 422.
    Refused { status: u16 },
    /// Answered 200 with a body that breaks the contract.
    OutOfContract,
}

/// The truth now, with ratings as of `as_of`.
pub(crate) fn truth(st: &State, as_of: NaiveDate) -> Truth {
    let cfg = st.config();
    let epoch = st.rerate_epoch();
    let reg = st.registry();
    let accounts = (1..=reg.total())
        .filter_map(|index| reg.get(index))
        .map(|a| {
            let id = account_id(a.index);
            let rating = crate::scores::rating(&cfg, &id, a.holdings_version, epoch, as_of);
            AccountTruth {
                account_name: reg
                    .renamed(a.index)
                    .map_or_else(|| account_name(cfg.seed, a.index), str::to_owned),
                account_id: id,
                status: a.status,
                version: a.version,
                holdings_version: a.holdings_version,
                rating,
            }
        })
        .collect();
    Truth {
        rerate_epoch: epoch,
        accounts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    #[test]
    fn the_truth_follows_touches_renames_status_and_rerates() {
        let state = State::new(SimConfig {
            accounts: 20,
            inactive_share: 0.0,
            ..SimConfig::default()
        });
        let day = NaiveDate::from_ymd_opt(2027, 3, 15).expect("date");
        let before = truth(&state, day);
        assert_eq!(before.accounts.len(), 20);
        assert_eq!(before.accounts[0].account_id, "ACC00000001");
        assert_eq!(before.accounts[0].account_name, account_name(42, 1));
        let now = crate::accounts::now_millis();
        state.registry_mut().touch(1, now);
        state.registry_mut().rename(2, "New, \"name\"", now);
        state.registry_mut().set_status(3, Status::Closed, now);
        let after = truth(&state, day);
        let (a, b) = (&before.accounts, &after.accounts);
        assert_eq!(b[0].version, a[0].version + 1);
        assert_ne!(b[0].rating, a[0].rating, "new holdings, new scores");
        assert_eq!(b[1].account_name, "New, \"name\"");
        assert_eq!(b[1].rating, a[1].rating, "a rename changes no score");
        assert_eq!(b[2].status, Status::Closed);
        state.rerate();
        let rerated = truth(&state, day);
        assert_eq!(rerated.rerate_epoch, 1);
        assert_ne!(rerated.accounts[4].rating, b[4].rating);
        match &rerated.accounts[4].rating {
            Rating::Analysis { analysis_date, .. } => assert_eq!(*analysis_date, day),
            other => panic!("no fault configured: {other:?}"),
        }
    }
}
