//! Snapshot files hold every account's balances and grants: the store creates them owner-only
//! (0600) in an owner-only directory (0700), whatever the umask, on real files.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;

use creditflow::snapshot::Store;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn snapshots_are_owner_only_files_in_an_owner_only_directory() {
    let root = tempfile::tempdir().unwrap();
    // A directory the store creates, and one that existed with wider permissions.
    let created = root.path().join("data/snapshots");
    let existing = root.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [&created, &existing] {
        let store = Store::open(dir, 3).unwrap();
        creditflow::recovery::write_empty_snapshots(&store, 2).unwrap();
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        let files: Vec<_> = (0..2).flat_map(|p| store.files(p)).collect();
        assert_eq!(files.len(), 2);
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}
