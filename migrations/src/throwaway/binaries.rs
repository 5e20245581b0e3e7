//! Where the PostgreSQL server binaries are and which user runs them.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nix::unistd::{User, geteuid};

use super::ClusterError;

/// The programs a cluster needs, all in one directory.
const PROGRAMS: [&str; 2] = ["initdb", "postgres"];

/// Where Debian and Ubuntu install each major version's server binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding `initdb` and `postgres`: `PG_BIN_DIR` if set, else the directory of
/// `initdb` (or, through its symlinks, of its target) on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub(super) fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = env::var_os("PG_BIN_DIR").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_programs(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesMissing {
                looked_in: format!("PG_BIN_DIR={}", dir.display()),
            })
        };
    }
    let path = env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = on_path(&path) {
        return Ok(dir);
    }
    newest_versioned(Path::new(DEBIAN_ROOT)).ok_or_else(|| ClusterError::BinariesMissing {
        looked_in: format!("PG_BIN_DIR is unset; not on PATH; not in {DEBIAN_ROOT}/*/bin"),
    })
}

fn on_path(path: &OsStr) -> Option<PathBuf> {
    for dir in env::split_paths(path) {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            continue;
        }
        if has_programs(&dir) {
            return Some(dir);
        }
        // A symlink farm such as /usr/local/bin may hold initdb without postgres; the real
        // binaries sit together where the link points.
        if let Some(real_dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|real| real.parent().map(Path::to_owned))
            .filter(|real_dir| has_programs(real_dir))
        {
            return Some(real_dir);
        }
    }
    None
}

/// The `<root>/<version>/bin` with the highest version that holds the programs.
fn newest_versioned(root: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_programs(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_programs(dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The ids to run the PostgreSQL binaries as.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunAs {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// `None` when this process is not root (the binaries run as this user); otherwise the
/// `postgres` user, or `nobody` where there is none, since initdb and postgres refuse root.
pub(super) fn unprivileged_user() -> Result<Option<RunAs>, ClusterError> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let user = User::from_name(name)
            .map_err(|source| ClusterError::UserLookup { user: name, source })?;
        if let Some(user) = user {
            return Ok(Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }));
        }
    }
    Err(ClusterError::NoUnprivilegedUser)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path, programs: &[&str]) {
        fs::create_dir_all(dir).expect("the test directory is writable");
        for program in programs {
            let path = dir.join(program);
            fs::write(&path, "#!/bin/sh\n").expect("the test directory is writable");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .expect("the test file is ours");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("15beta"), None);
        assert!(parse_version("10") > parse_version("9.6"));
    }

    #[test]
    fn newest_complete_version_wins() {
        let root = tempfile::tempdir().expect("a temporary directory");
        fake_bin(&root.path().join("9.6/bin"), &PROGRAMS);
        fake_bin(&root.path().join("10/bin"), &PROGRAMS);
        // Newer, but without the server: only the client package is installed.
        fake_bin(&root.path().join("17/bin"), &["initdb"]);
        fake_bin(&root.path().join("extra/bin"), &PROGRAMS);
        assert_eq!(
            newest_versioned(root.path()),
            Some(root.path().join("10/bin"))
        );
        assert_eq!(newest_versioned(&root.path().join("missing")), None);
    }

    #[test]
    fn path_lookup_follows_symlinks_to_the_real_directory() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let real = root.path().join("pg/bin");
        fake_bin(&real, &PROGRAMS);
        let farm = root.path().join("farm");
        fs::create_dir_all(&farm).expect("the test directory is writable");
        std::os::unix::fs::symlink(real.join("initdb"), farm.join("initdb"))
            .expect("the test directory is writable");
        let empty = root.path().join("empty");
        fs::create_dir_all(&empty).expect("the test directory is writable");
        let path = env::join_paths([&empty, &farm]).expect("plain paths join");
        let found = on_path(&path).expect("initdb is on the path");
        assert_eq!(fs::canonicalize(found).ok(), fs::canonicalize(&real).ok());
        let path = env::join_paths([&empty]).expect("plain paths join");
        assert_eq!(on_path(&path), None);
    }
}
