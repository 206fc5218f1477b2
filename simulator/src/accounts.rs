//! The account system's records: derived from the seed, changed only through a small overlay.
//!
//! Account `i` (1-based) has id `ACC{i:08}`; its status, version, `updatedAt`, holdings version
//! and name are pure functions of `(seed, i)`. Only accounts that were changed while the
//! simulator runs (touched, status set) have an entry in the overlay, and accounts added while
//! running are remembered as ranges, so memory does not grow with the number of accounts.
//!
//! The record `version` grows on every change; the *holdings* version grows only when the
//! holdings change ([`Registry::touch`]). ESG scores depend on the holdings version, so a status
//! change bumps the record version without changing any rating, as the contract describes.

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::hash::{mix, salt, unit};

/// Status of an account in the account system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Open and to be rated.
    Active,
    /// Closed for good.
    Closed,
    /// Temporarily suspended.
    Suspended,
}

impl Status {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Closed => "CLOSED",
            Status::Suspended => "SUSPENDED",
        }
    }

    /// Parses the contract's spelling (exact, upper case).
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "ACTIVE" => Some(Status::Active),
            "CLOSED" => Some(Status::Closed),
            "SUSPENDED" => Some(Status::Suspended),
            _ => None,
        }
    }
}

/// The state of one account as the account system would answer it now (without the name, which
/// is only computed when a record is written out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountState {
    pub index: u64,
    pub status: Status,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    /// Grows only when the holdings change; the ESG scores depend on it.
    pub holdings_version: u64,
}

/// The id of account `index`.
pub(crate) fn account_id(index: u64) -> String {
    format!("ACC{index:08}")
}

/// The index of a well-formed generated id (`ACC` + at least 8 digits, written exactly as
/// [`account_id`] writes it); `None` for any other id.
pub(crate) fn parse_account_index(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("ACC")?;
    if digits.len() < 8 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = digits.parse().ok()?;
    (index >= 1 && format!("{index:08}") == digits).then_some(index)
}

/// True when `id` matches the contract's pattern `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
pub(crate) fn is_valid_account_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The fixed instant generated `updatedAt` values count back from.
pub(crate) fn base_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Generated `updatedAt` values lie within this many minutes before [`base_instant`].
const UPDATED_SPREAD_MINUTES: u64 = 365 * 24 * 60;

/// What changed about one account while the simulator ran.
#[derive(Debug, Clone)]
struct Change {
    changes: u64,
    holdings_changes: u64,
    status: Option<Status>,
    updated_at: DateTime<Utc>,
}

/// A range of accounts added while running: from `first` up to the next batch.
#[derive(Debug, Clone)]
struct AddBatch {
    first: u64,
    at: DateTime<Utc>,
}

/// Every account of the account system: generated ones plus the overlay of changes.
#[derive(Debug)]
pub(crate) struct Registry {
    seed: u64,
    inactive_share: f64,
    generated: u64,
    total: u64,
    adds: Vec<AddBatch>,
    changes: HashMap<u64, Change>,
    /// Names given by [`Registry::rename`], by index; every other name is generated.
    names: HashMap<u64, String>,
}

impl Registry {
    pub fn new(seed: u64, accounts: u64, inactive_share: f64) -> Self {
        Registry {
            seed,
            inactive_share,
            generated: accounts,
            total: accounts,
            adds: Vec::new(),
            changes: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// Number of accounts, generated and added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The account with this index, or `None` when there is none.
    pub fn get(&self, index: u64) -> Option<AccountState> {
        if index == 0 || index > self.total {
            return None;
        }
        let mut state = if index <= self.generated {
            self.generated_state(index)
        } else {
            let batch = self.adds.partition_point(|b| b.first <= index);
            let at = self
                .adds
                .get(batch.checked_sub(1)?)
                .map(|b| b.at)
                .unwrap_or_else(base_instant);
            AccountState {
                index,
                status: Status::Active,
                version: 1,
                updated_at: at,
                holdings_version: 1,
            }
        };
        if let Some(change) = self.changes.get(&index) {
            state.version += change.changes;
            state.holdings_version += change.holdings_changes;
            state.status = change.status.unwrap_or(state.status);
            state.updated_at = change.updated_at;
        }
        Some(state)
    }

    /// The account with this id, or `None` when the id is not one of ours.
    pub fn get_by_id(&self, id: &str) -> Option<AccountState> {
        self.get(parse_account_index(id)?)
    }

    fn generated_state(&self, index: u64) -> AccountState {
        let h = mix(self.seed, &[salt("account"), index]);
        let inactive = unit(mix(self.seed, &[salt("status"), index])) < self.inactive_share;
        let status = match (inactive, h & 1) {
            (false, _) => Status::Active,
            (true, 0) => Status::Closed,
            (true, _) => Status::Suspended,
        };
        let version = 1 + (h >> 8) % 5;
        let minutes = (h >> 16) % UPDATED_SPREAD_MINUTES;
        AccountState {
            index,
            status,
            version,
            updated_at: base_instant() - Duration::minutes(minutes as i64),
            holdings_version: version,
        }
    }

    fn change(&mut self, index: u64, now: DateTime<Utc>, holdings: bool, status: Option<Status>) {
        let Some(current) = self.get(index) else {
            return;
        };
        // updatedAt never goes backwards, even if the clock does.
        let at = if now > current.updated_at {
            now
        } else {
            current.updated_at + Duration::milliseconds(1)
        };
        let entry = self.changes.entry(index).or_insert(Change {
            changes: 0,
            holdings_changes: 0,
            status: None,
            updated_at: at,
        });
        entry.changes += 1;
        entry.holdings_changes += u64::from(holdings);
        if status.is_some() {
            entry.status = status;
        }
        entry.updated_at = at;
    }

    /// The holdings of the account changed: version and holdings version grow by one,
    /// `updatedAt` becomes `now`. `None` when there is no such account.
    pub fn touch(&mut self, index: u64, now: DateTime<Utc>) -> Option<AccountState> {
        self.get(index)?;
        self.change(index, now, true, None);
        self.get(index)
    }

    /// Sets the status; a real change grows the version and sets `updatedAt` to `now`, setting
    /// the status it already has changes nothing. `None` when there is no such account.
    pub fn set_status(
        &mut self,
        index: u64,
        status: Status,
        now: DateTime<Utc>,
    ) -> Option<AccountState> {
        let current = self.get(index)?;
        if current.status != status {
            self.change(index, now, false, Some(status));
        }
        self.get(index)
    }

    /// The account is renamed: the version grows by one (not the holdings version, so no
    /// rating changes), `updatedAt` becomes `now`. `None` when there is no such account.
    pub fn rename(&mut self, index: u64, name: &str, now: DateTime<Utc>) -> Option<AccountState> {
        self.get(index)?;
        self.change(index, now, false, None);
        self.names.insert(index, name.to_owned());
        self.get(index)
    }

    /// The name given by [`Registry::rename`], if the account was renamed.
    pub fn renamed(&self, index: u64) -> Option<&str> {
        self.names.get(&index).map(String::as_str)
    }

    /// Adds `n` ACTIVE accounts after the last id; returns the first and last new index.
    pub fn add(&mut self, n: u64, now: DateTime<Utc>) -> Option<(u64, u64)> {
        if n == 0 || self.total.saturating_add(n) > crate::config::MAX_ACCOUNTS {
            return None;
        }
        let first = self.total + 1;
        self.adds.push(AddBatch { first, at: now });
        self.total += n;
        Some((first, self.total))
    }
}

/// The current instant, at millisecond precision (what `updatedAt` carries).
pub(crate) fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_odd_ids_are_refused() {
        assert_eq!(account_id(7), "ACC00000007");
        assert_eq!(account_id(123_456_789), "ACC123456789");
        for i in [1, 42, 99_999_999, 100_000_000] {
            assert_eq!(parse_account_index(&account_id(i)), Some(i));
        }
        for bad in [
            "ACC0000007",
            "ACC000000007",
            "ACC00000000",
            "acc00000001",
            "ACC0000000x",
        ] {
            assert_eq!(parse_account_index(bad), None, "{bad}");
        }
    }

    #[test]
    fn id_pattern_follows_the_contract() {
        assert!(is_valid_account_id("ACC00000001"));
        assert!(is_valid_account_id("a"));
        assert!(is_valid_account_id("A.b_c-d"));
        assert!(is_valid_account_id(&"A".repeat(64)));
        assert!(!is_valid_account_id(&"A".repeat(65)));
        assert!(!is_valid_account_id(""));
        assert!(!is_valid_account_id("-ACC"));
        assert!(!is_valid_account_id("ACC 1"));
        assert!(!is_valid_account_id("ACC/1"));
        assert!(!is_valid_account_id("ACCé"));
    }

    #[test]
    fn generated_accounts_are_deterministic_with_the_configured_inactive_share() {
        let a = Registry::new(42, 20_000, 0.05);
        let b = Registry::new(42, 20_000, 0.05);
        let mut inactive = 0;
        for i in 1..=20_000 {
            let s = a.get(i).expect("exists");
            assert_eq!(Some(s), b.get(i));
            assert!((1..=5).contains(&s.version));
            assert!(s.updated_at <= base_instant());
            inactive += u32::from(s.status != Status::Active);
        }
        assert!((800..=1200).contains(&inactive), "inactive {inactive}");
        assert_eq!(a.get(0), None);
        assert_eq!(a.get(20_001), None);
    }

    #[test]
    fn touch_grows_version_and_holdings_but_status_only_the_version() {
        let mut r = Registry::new(1, 10, 0.0);
        let before = r.get(3).expect("exists");
        let now = now_millis();
        let touched = r.touch(3, now).expect("exists");
        assert_eq!(touched.version, before.version + 1);
        assert_eq!(touched.holdings_version, before.holdings_version + 1);
        assert_eq!(touched.updated_at, now);
        let closed = r.set_status(3, Status::Closed, now).expect("exists");
        assert_eq!(closed.status, Status::Closed);
        assert_eq!(closed.version, before.version + 2);
        assert_eq!(closed.holdings_version, before.holdings_version + 1);
        assert!(
            closed.updated_at > now,
            "updatedAt never repeats or goes back"
        );
        let same = r.set_status(3, Status::Closed, now).expect("exists");
        assert_eq!(same.version, closed.version, "no change, no new version");
        assert!(r.touch(11, now).is_none());
    }

    #[test]
    fn rename_grows_the_version_but_not_the_holdings() {
        let mut r = Registry::new(1, 10, 0.0);
        let before = r.get(4).expect("exists");
        assert_eq!(r.renamed(4), None);
        let now = now_millis();
        let renamed = r.rename(4, "=\u{0}New \"Name\"\r\n", now).expect("exists");
        assert_eq!(renamed.version, before.version + 1);
        assert_eq!(renamed.holdings_version, before.holdings_version);
        assert_eq!(renamed.updated_at, now);
        assert_eq!(r.renamed(4), Some("=\u{0}New \"Name\"\r\n"));
        assert!(r.rename(11, "x", now).is_none());
        assert_eq!(r.renamed(11), None);
    }

    #[test]
    fn added_accounts_follow_the_last_id() {
        let mut r = Registry::new(1, 10, 0.5);
        let now = now_millis();
        assert_eq!(r.add(3, now), Some((11, 13)));
        assert_eq!(r.add(2, now), Some((14, 15)));
        assert_eq!(r.total(), 15);
        let added = r.get(12).expect("exists");
        assert_eq!(added.status, Status::Active);
        assert_eq!(added.version, 1);
        assert_eq!(added.updated_at, now);
        assert!(r.get_by_id("ACC00000015").is_some());
        assert!(r.get_by_id("ACC00000016").is_none());
        assert_eq!(r.add(0, now), None);
    }
}
