use std::io::Write as _;

use super::*;
use crate::wire::{ErrorEstimate, SenderPacket, Timestamp};

const A: &str = "000102030405060708090a0b0c0d0e0f";
const B: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00112233";

fn key(hex_text: &str) -> Key {
    Key::parse(hex_text, "K", Path::new("k")).unwrap()
}

fn signed(k: &str) -> Vec<u8> {
    let p = SenderPacket::probe_auth(9, 7, Timestamp::new(1, 2), ErrorEstimate::default(), 112, 0)
        .unwrap();
    let mut out = Vec::new();
    p.encode_auth(key(k).bytes(), &mut out);
    out
}

#[test]
fn key_text_is_hex_of_at_least_16_octets() {
    assert_eq!(key(A).bytes().len(), 16);
    // Whitespace (a trailing newline, line breaks) is ignored; upper case is fine.
    let k = Key::parse(" 0001020304050607\n08090A0B0C0D0E0F\n", "K", Path::new("k")).unwrap();
    assert_eq!(k, key(A));
    let short = Key::parse("0001020304", "S", Path::new("/x")).unwrap_err();
    assert!(
        matches!(short, KeyError::Length { len: 5, .. }),
        "{short:?}"
    );
    assert!(
        short.to_string().starts_with("S: /x holds 5 key octets"),
        "{short}"
    );
    let garbage = Key::parse("not a key, not hex at all!!", "S", Path::new("/x")).unwrap_err();
    assert!(matches!(garbage, KeyError::NotHex { .. }));
    assert!(
        Key::parse("0", "S", Path::new("/x")).is_err(),
        "odd digit count"
    );
    assert!(Key::parse("", "S", Path::new("/x")).is_err());
}

#[test]
fn keys_never_show_in_debug_or_errors() {
    let k = key(A);
    assert_eq!(format!("{k:?}"), "Key(16 octets)");
    let e = Key::parse("0102030405060708090a0b0c0d0e0f", "S", Path::new("/x")).unwrap_err();
    assert!(!e.to_string().contains("0102"), "{e}");
}

#[test]
fn mode_parses() {
    assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
    assert_eq!("Optional".parse::<Mode>(), Ok(Mode::Optional));
    assert_eq!("required".parse::<Mode>(), Ok(Mode::Required));
    assert!("on".parse::<Mode>().is_err());
}

#[test]
fn verification_tries_current_then_next() {
    let ring = KeyRing::fixed(Keys {
        current: key(A),
        next: Some(key(B)),
    });
    assert_eq!(ring.verify(&signed(A)), Verified::Ok { tlvs_ok: None });
    assert_eq!(ring.verify(&signed(B)), Verified::Ok { tlvs_ok: None });
    let other = "aa".repeat(16);
    assert_eq!(ring.verify(&signed(&other)), Verified::Bad);
    assert_eq!(ring.verify(&signed(A)[..100]), Verified::Bad);
    // Without a next key, B no longer verifies; signing always uses current.
    let ring = KeyRing::fixed(Keys {
        current: key(A),
        next: None,
    });
    assert_eq!(ring.verify(&signed(B)), Verified::Bad);
    let mut out = Vec::new();
    ring.sign(|k| out.extend_from_slice(k));
    assert_eq!(out, key(A).bytes());
}

fn write(path: &Path, text: &str) {
    // Replace, as a Secret volume does (new inode), not rewrite in place.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn files_load_and_reload_keeping_good_keys_over_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("current");
    let next = dir.path().join("next");
    write(&cur, A);
    write(&next, B);
    let files = KeyFiles {
        current: cur.clone(),
        next: Some(next.clone()),
        current_setting: "CUR",
        next_setting: "NEXT",
    };
    let ring = KeyRing::load(files.clone()).unwrap();
    assert_eq!(ring.verify(&signed(B)), Verified::Ok { tlvs_ok: None });
    // Promote B, drop A.
    write(&cur, B);
    std::fs::remove_file(&next).unwrap();
    let ring_files = KeyFiles {
        next: None,
        ..files.clone()
    };
    let promoted = KeyRing::load(ring_files).unwrap();
    assert_eq!(promoted.verify(&signed(A)), Verified::Bad);
    // The next file gone: reload keeps what it had (and says why, without the key).
    assert!(!ring.reload());
    assert_eq!(ring.verify(&signed(A)), Verified::Ok { tlvs_ok: None });
    write(&next, A);
    assert!(ring.reload(), "current is now B, next A");
    let mut out = Vec::new();
    ring.sign(|k| out.extend_from_slice(k));
    assert_eq!(out, key(B).bytes());
    // Garbage is refused; the keys in use stay.
    write(&cur, "garbage");
    assert!(!ring.reload());
    assert_eq!(ring.verify(&signed(B)), Verified::Ok { tlvs_ok: None });
    // Errors name the setting.
    let e = KeyRing::load(files).unwrap_err();
    assert!(e.to_string().starts_with("CUR: "), "{e}");
    let missing = Key::read(&dir.path().join("nope"), "CUR").unwrap_err();
    assert!(matches!(missing, KeyError::Read { .. }));
}

#[test]
fn the_watcher_picks_up_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("current");
    write(&cur, A);
    let ring = KeyRing::load(KeyFiles {
        current: cur.clone(),
        next: None,
        current_setting: "CUR",
        next_setting: "NEXT",
    })
    .unwrap();
    ring.watch(Duration::from_millis(20));
    write(&cur, B);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ring.verify(&signed(B)) != (Verified::Ok { tlvs_ok: None }) {
        assert!(
            std::time::Instant::now() < deadline,
            "new key not picked up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ring.verify(&signed(A)), Verified::Bad);
}

#[test]
fn off_needs_no_keys_and_on_needs_them() {
    assert!(
        Auth::new(Mode::Off, None, "--key-file")
            .unwrap()
            .ring()
            .is_none()
    );
    let e = Auth::new(Mode::Required, None, "--key-file").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--key-file is required with authenticated mode required"
    );
}
