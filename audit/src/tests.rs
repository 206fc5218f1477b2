use super::*;
use note::{NoteSigner, NoteVerifier};

const ORIGIN: &str = "esg.test/audit";

fn actor() -> Actor {
    Actor {
        user: "esg".into(),
        uid: 990,
        host: "batch-1".into(),
    }
}

/// A log of `n` entries and a checkpoint over them; the directory, the signer.
fn log_of(n: u64) -> (tempfile::TempDir, AuditLog, NoteSigner) {
    let dir = tempfile::tempdir().expect("tmp");
    let log = AuditLog::new(&dir.path().join("audit")).with_actor(actor());
    for i in 1..=n {
        log.append(
            Event::new("file_written", format!("FirmESGRatings_2026112{i}.csv"))
                .with("sha256", format!("{i:064}")),
        )
        .expect("append");
    }
    let signer = NoteSigner::generate(ORIGIN).expect("key");
    log.checkpoint(&signer, ORIGIN).expect("checkpoint");
    (dir, log, signer)
}

fn local_checkpoint(log: &AuditLog) -> Vec<(String, String)> {
    vec![(
        "audit.checkpoint".into(),
        std::fs::read_to_string(log.checkpoint_path()).expect("checkpoint"),
    )]
}

fn lines(log: &AuditLog) -> Vec<String> {
    std::fs::read_to_string(log.log_path())
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(log: &AuditLog, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(log.log_path(), text).expect("rewrite");
}

#[test]
fn an_intact_log_verifies_with_its_checkpoint() {
    let (_dir, log, signer) = log_of(5);
    let v = verify(log.dir(), &signer.verifier(), &local_checkpoint(&log)).expect("verifies");
    assert_eq!(v.entries, 5);
    assert_eq!(v.checkpoints, [("audit.checkpoint".to_owned(), 5)]);
    let entries = read(log.dir()).expect("read");
    assert_eq!(entries[0].prev, GENESIS);
    assert_eq!(entries[4].seq, 5);
    assert_eq!(entries[4].actor, actor());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&log.log_path()), 0o640);
        assert_eq!(mode(&log.checkpoint_path()), 0o640);
    }
}

#[test]
fn one_changed_character_is_found() {
    let (_dir, log, signer) = log_of(5);
    let mut l = lines(&log);
    l[2] = l[2].replace("FirmESGRatings_20261123", "FirmESGRatings_20261199");
    rewrite(&log, &l);
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("changed");
    assert_eq!(err.entry, Some(3), "{err}");
    // In the last entry only the checkpoint sees it.
    let (_dir, log, signer) = log_of(5);
    let mut l = lines(&log);
    l[4] = l[4].replace("file_written", "file_writteN");
    rewrite(&log, &l);
    assert!(verify(log.dir(), &signer.verifier(), &[]).is_ok());
    let err = verify(log.dir(), &signer.verifier(), &local_checkpoint(&log)).expect_err("changed");
    assert!(err.message.contains("rewritten"), "{err}");
}

#[test]
fn a_deleted_line_and_two_swapped_lines_are_found() {
    let (_dir, log, signer) = log_of(5);
    let mut l = lines(&log);
    l.remove(1);
    rewrite(&log, &l);
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("deleted");
    assert_eq!(err.entry, Some(2), "{err}");

    let (_dir, log, signer) = log_of(5);
    let mut l = lines(&log);
    l.swap(1, 3);
    rewrite(&log, &l);
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("swapped");
    assert_eq!(err.entry, Some(2), "{err}");
}

#[test]
fn a_truncated_tail_is_found_by_the_checkpoint_and_a_cut_line_by_itself() {
    let (_dir, log, signer) = log_of(5);
    let l = lines(&log);
    rewrite(&log, &l[..3]);
    let err = verify(log.dir(), &signer.verifier(), &local_checkpoint(&log)).expect_err("cut");
    assert_eq!(err.entry, Some(4), "{err}");
    assert!(err.message.contains("cut off"), "{err}");

    let (_dir, log, signer) = log_of(3);
    let text = std::fs::read_to_string(log.log_path()).expect("log");
    std::fs::write(log.log_path(), &text[..text.len() - 10]).expect("cut");
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("cut line");
    assert_eq!(err.entry, Some(3), "{err}");
    // And nothing is chained onto it.
    let refused = log.append(Event::new("run_started", "2026-11-24"));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("cut short")),
        "appended onto a cut line"
    );
}

#[test]
fn a_log_re_signed_with_another_key_is_refused() {
    let (_dir, log, signer) = log_of(4);
    let other = NoteSigner::generate(ORIGIN).expect("key");
    log.checkpoint(&other, ORIGIN).expect("re-signed");
    let err =
        verify(log.dir(), &signer.verifier(), &local_checkpoint(&log)).expect_err("other key");
    assert!(err.message.contains("no signature by the key"), "{err}");
    // A signature line changed by hand.
    log.checkpoint(&signer, ORIGIN).expect("signed");
    let note = std::fs::read_to_string(log.checkpoint_path()).expect("note");
    let forged = note.replacen("\n4\n", "\n3\n", 1);
    let err =
        verify(log.dir(), &signer.verifier(), &[("forged".into(), forged)]).expect_err("forged");
    assert!(err.message.contains("does not verify"), "{err}");
}

#[test]
fn a_log_rewritten_consistently_but_older_than_a_delivered_checkpoint_is_found() {
    let (_dir, log, signer) = log_of(4);
    // The firm holds this checkpoint (delivered with the day's files).
    let delivered = local_checkpoint(&log).remove(0).1;
    // Someone with the host rewrites the log from entry 3 on, consistently, and re-signs it.
    let mut l = lines(&log);
    l.truncate(2);
    rewrite(&log, &l);
    for i in 3..=6 {
        log.append(Event::new("file_written", format!("forged-{i}")))
            .expect("append");
    }
    log.checkpoint(&signer, ORIGIN).expect("re-signed");
    assert!(
        verify(log.dir(), &signer.verifier(), &local_checkpoint(&log)).is_ok(),
        "consistent by itself"
    );
    let err = verify(
        log.dir(),
        &signer.verifier(),
        &[("delivered".into(), delivered)],
    )
    .expect_err("older checkpoint");
    assert!(
        err.message.contains("delivered") && err.message.contains("rewritten"),
        "{err}"
    );
}

#[test]
fn keys_round_trip_through_their_texts() {
    // Base64 holds '+' as often as not: many keys, so that some do.
    for _ in 0..64 {
        let signer = NoteSigner::generate(ORIGIN).expect("key");
        let text = signer.verifier().to_text();
        assert_eq!(
            NoteVerifier::parse(&text).as_ref(),
            Ok(&signer.verifier()),
            "{text}"
        );
        assert!(NoteSigner::parse(&signer.to_private_text()).is_ok());
    }
    let signer = NoteSigner::generate(ORIGIN).expect("key");
    let again = NoteSigner::parse(&signer.to_private_text()).expect("parse");
    assert_eq!(again.verifier(), signer.verifier());
    let verifier = NoteVerifier::parse(&signer.verifier().to_text()).expect("parse");
    assert_eq!(verifier, signer.verifier());
    assert!(signer.verifier().to_text().starts_with("esg.test/audit+"));
    assert!(format!("{signer:?}").find("PRIVATE").is_none());
    let mut broken = signer.to_private_text();
    broken.replace_range(broken.len() - 6..broken.len() - 2, "AAAA");
    assert!(NoteSigner::parse(&broken).is_err());
    assert!(NoteSigner::parse("not a key").is_err());
    assert!(NoteSigner::generate("with space").is_err());
}

#[test]
fn a_checkpoint_is_a_c2sp_signed_note() {
    let (_dir, log, _signer) = log_of(2);
    let note = std::fs::read_to_string(log.checkpoint_path()).expect("note");
    let lines: Vec<&str> = note.split('\n').collect();
    assert_eq!(lines[0], ORIGIN);
    assert_eq!(lines[1], "2");
    assert_eq!(lines[2].len(), 44, "base64 of 32 bytes");
    assert_eq!(lines[3], "");
    assert!(lines[4].starts_with("\u{2014} esg.test/audit "), "{note}");
    assert_eq!(lines[5], "");
}

fn append_n(log: &AuditLog, n: u64, what: &str) {
    for i in 0..n {
        log.append(Event::new("file_written", format!("{what}-{i}")))
            .expect("append");
    }
}

fn note_of(log: &AuditLog, signer: &NoteSigner, name: &str) -> (String, String) {
    log.checkpoint(signer, ORIGIN).expect("checkpoint");
    (
        name.to_owned(),
        std::fs::read_to_string(log.checkpoint_path()).expect("note"),
    )
}

#[test]
fn segments_chain_on_and_every_checkpoint_still_holds() {
    let (_dir, log, signer) = log_of(3);
    let before = note_of(&log, &signer, "before");
    let closed = log.rotate().expect("rotate").expect("a segment");
    assert!(closed.ends_with("audit-0000000001.jsonl"), "{closed:?}");
    append_n(&log, 2, "b");
    let after = note_of(&log, &signer, "after");
    let v = verify(
        log.dir(),
        &signer.verifier(),
        &[before.clone(), after.clone()],
    )
    .expect("verifies");
    assert_eq!((v.first, v.entries), (1, 6), "3 + segment_started + 2");
    assert_eq!(v.checkpoints.len(), 2);
    let entries = read(log.dir()).expect("read");
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[3].action, "segment_started");
    // A month later it rotates by itself; in the same month it does not.
    assert!(log.rotate_monthly(Utc::now()).expect("rotate").is_none());
    let next_month = Utc::now() + chrono::Duration::days(40);
    assert!(log.rotate_monthly(next_month).expect("rotate").is_some());
}

#[test]
fn purged_segments_leave_a_log_verifiable_from_the_oldest_kept_one() {
    let (_dir, log, signer) = log_of(3);
    let old = note_of(&log, &signer, "old");
    log.rotate().expect("rotate");
    append_n(&log, 2, "b");
    log.rotate().expect("rotate");
    append_n(&log, 2, "c");
    let recent = note_of(&log, &signer, "recent");
    let removed = log
        .purge_segments(Utc::now() + chrono::Duration::seconds(1))
        .expect("purge");
    assert_eq!(
        removed.len(),
        2,
        "both closed segments, never the current one"
    );
    let v = verify(
        log.dir(),
        &signer.verifier(),
        &[old.clone(), recent.clone()],
    )
    .expect("verifies");
    assert_eq!(v.first, 7, "the current segment starts at entry 7");
    assert_eq!(v.entries, 9);
    assert_eq!(v.checkpoints, [("recent".to_owned(), 9)]);
    assert_eq!(v.predating, [("old".to_owned(), 3)]);

    // The kept segment's frontier stands for the purged entries: changing it shows.
    let mut l = lines(&log);
    let start: Entry = serde_json::from_str(&l[0]).expect("entry");
    let frontier = start.details["frontier"].clone();
    let forged = frontier.replacen(&frontier[frontier.len() - 4..], "0000", 1);
    l[0] = l[0].replace(&frontier, &forged);
    rewrite(&log, &l);
    let err = verify(log.dir(), &signer.verifier(), &[recent]).expect_err("forged frontier");
    assert!(
        err.message.contains("rewritten") || err.message.contains("chain"),
        "{err}"
    );
}

#[test]
fn a_closed_segment_removed_from_the_middle_is_found() {
    let (_dir, log, signer) = log_of(2);
    log.rotate().expect("rotate");
    append_n(&log, 2, "b");
    let middle = log.rotate().expect("rotate").expect("segment");
    append_n(&log, 1, "c");
    std::fs::remove_file(&middle).expect("remove");
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("gap");
    assert!(err.message.contains("removed"), "{err}");
}

#[test]
fn a_segment_start_whose_frontier_is_not_the_logs_is_found() {
    let (_dir, log, signer) = log_of(3);
    log.rotate().expect("rotate");
    append_n(&log, 1, "b");
    // Rewrite the (not oldest) segment start with another frontier: the chain to it is kept
    // by recomputing nothing, so the entry's own check has to catch it.
    let mut l = lines(&log);
    let start: Entry = serde_json::from_str(&l[0]).expect("entry");
    let mut changed = start.clone();
    changed
        .details
        .insert("frontier".into(), "1:".to_owned() + &"0".repeat(64));
    changed.details.insert("tree_size".into(), "1".into());
    l[0] = serde_json::to_string(&changed).expect("json");
    rewrite(&log, &l);
    let err = verify(log.dir(), &signer.verifier(), &[]).expect_err("frontier");
    assert!(err.message.contains("frontier"), "{err}");
}
