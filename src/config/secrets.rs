//! Secrets read from files. Beside any secret key (`client_secret`, `password`, `routing_key`,
//! `bearer_token`, `alerts.webhook.url`, a secret librdkafka property) the key with `_file`
//! appended names a file that holds the secret: `client_secret_file = "/etc/esg/secrets/ams"`.
//! A relative name is taken in systemd's credentials directory (`$CREDENTIALS_DIRECTORY`, set by
//! `LoadCredential=`). The file is read once, at start-up, its one trailing newline dropped, and
//! its value set as the key itself; the buffers are wiped.

use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Where one secret of the effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The dotted key, e.g. `esg_api.client_secret`.
    pub key: String,
    /// `file /path`, `environment VAR`, or `configuration file PATH`.
    pub from: String,
}

/// A key of the table and what is wrong with it.
pub(super) type KeyError = (Vec<String>, String);

/// Replaces every `<secret>_file` key of `table` by `<secret>` with the file's content; returns
/// the secrets so set, with their files.
pub(super) fn read_files(
    table: &mut toml::Table,
    credentials_dir: Option<&Path>,
) -> Result<Vec<(Vec<String>, PathBuf)>, KeyError> {
    let mut read = Vec::new();
    walk(table, &mut Vec::new(), credentials_dir, &mut read)?;
    Ok(read)
}

fn walk(
    table: &mut toml::Table,
    path: &mut Vec<String>,
    credentials_dir: Option<&Path>,
    read: &mut Vec<(Vec<String>, PathBuf)>,
) -> Result<(), KeyError> {
    let file_keys: Vec<String> = table
        .keys()
        .filter(|k| {
            k.strip_suffix("_file")
                .is_some_and(|base| is_secret(path, base))
        })
        .cloned()
        .collect();
    for file_key in file_keys {
        let base = file_key.trim_end_matches("_file").to_owned();
        let mut key_path = path.clone();
        key_path.push(file_key.clone());
        if table.contains_key(&base) {
            return Err((
                key_path,
                format!("is set and so is `{base}`: give the secret one way, not both"),
            ));
        }
        let Some(toml::Value::String(name)) = table.remove(&file_key) else {
            return Err((key_path, "must be the path of a file, in quotes".into()));
        };
        let file = resolve(&name, credentials_dir).map_err(|m| (key_path.clone(), m))?;
        let secret = read_secret(&file).map_err(|m| (key_path.clone(), m))?;
        table.insert(base.clone(), toml::Value::String(secret));
        let mut secret_path = path.clone();
        secret_path.push(base);
        read.push((secret_path, file));
    }
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => {
                path.push(key.clone());
                walk(inner, path, credentials_dir, read)?;
                path.pop();
            }
            // An array of tables (`[[delivery]]`): `delivery[1].secret_access_key_file`.
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        path.push(format!("{key}[{}]", i + 1));
                        walk(inner, path, credentials_dir, read)?;
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_secret(path: &[String], base: &str) -> bool {
    let mut full = path.to_vec();
    full.push(base.to_owned());
    super::is_secret_key(&full)
}

pub(super) fn resolve(name: &str, credentials_dir: Option<&Path>) -> Result<PathBuf, String> {
    let path = Path::new(name);
    if name.is_empty() {
        return Err("is empty; it must name a file".into());
    }
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    match credentials_dir {
        Some(dir) => Ok(dir.join(path)),
        None => Err(format!(
            "is the relative name {name:?}, which is looked up in $CREDENTIALS_DIRECTORY \
             (systemd LoadCredential=), and that is not set; give an absolute path"
        )),
    }
}

pub(super) fn read_secret(file: &Path) -> Result<String, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(format!(
                "{} is open to every user of the machine (mode {mode:04o}); \
                 chmod o-rwx it (0600 or 0400)",
                file.display()
            ));
        }
    }
    let mut bytes =
        std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut text = match String::from_utf8(std::mem::take(&mut bytes)) {
        Ok(text) => text,
        Err(e) => {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            return Err(format!("{} is not UTF-8 text", file.display()));
        }
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    if text.contains('\n') {
        text.zeroize();
        return Err(format!(
            "{} holds more than one line; a secret file holds the secret alone",
            file.display()
        ));
    }
    Ok(text)
}

/// Overwrites every secret string of `table` (the parser's copy, once the configuration holds
/// its own).
pub(super) fn wipe(table: &mut toml::Table, path: &mut Vec<String>) {
    for (key, value) in table.iter_mut() {
        if let toml::Value::Array(items) = value {
            for (i, item) in items.iter_mut().enumerate() {
                if let toml::Value::Table(inner) = item {
                    path.push(format!("{key}[{}]", i + 1));
                    wipe(inner, path);
                    path.pop();
                }
            }
            continue;
        }
        path.push(key.clone());
        match value {
            toml::Value::Table(inner) => wipe(inner, path),
            toml::Value::String(text) if super::is_secret_key(path) => text.zeroize(),
            _ => {}
        }
        path.pop();
    }
}

/// Every secret key set in `table`, dotted, in order.
pub(super) fn secret_keys(table: &toml::Table, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in table {
        if let toml::Value::Array(items) = value {
            // An array of tables (`[[delivery]]`): `delivery[1].secret_access_key`.
            for (i, item) in items.iter().enumerate() {
                if let toml::Value::Table(inner) = item {
                    path.push(format!("{key}[{}]", i + 1));
                    secret_keys(inner, path, out);
                    path.pop();
                }
            }
            continue;
        }
        path.push(key.clone());
        match value {
            toml::Value::Table(inner) => secret_keys(inner, path, out),
            toml::Value::String(_) if super::is_secret_key(path) => out.push(path.clone()),
            _ => {}
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn a_file_key_becomes_the_secret_with_its_newline_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let f = secret_file(dir.path(), "s", "hunter2\n", 0o600);
        let mut t = table(&format!(
            "[esg_api]\nclient_secret_file = \"{}\"\n[kafka.properties]\n\"sasl.password_file\" = \"s\"\n",
            f.display()
        ));
        let read = read_files(&mut t, Some(dir.path())).expect("read");
        assert_eq!(t["esg_api"]["client_secret"].as_str(), Some("hunter2"));
        assert!(t["esg_api"].get("client_secret_file").is_none());
        assert_eq!(
            t["kafka"]["properties"]["sasl.password"].as_str(),
            Some("hunter2"),
            "relative: in the credentials directory"
        );
        assert_eq!(read.len(), 2);
    }

    #[test]
    fn bad_secret_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let open = secret_file(dir.path(), "open", "x", 0o644);
        let empty = secret_file(dir.path(), "empty", "\n", 0o600);
        let two = secret_file(dir.path(), "two", "a\nb\n", 0o600);
        for (text, words) in [
            (
                format!("client_secret_file = \"{}\"", open.display()),
                "mode 0644",
            ),
            (
                format!("client_secret_file = \"{}\"", empty.display()),
                "is empty",
            ),
            (
                format!("client_secret_file = \"{}\"", two.display()),
                "more than one line",
            ),
            (
                "client_secret_file = \"/nonexistent/s\"".into(),
                "cannot read /nonexistent/s",
            ),
            (
                "client_secret_file = \"rel\"".into(),
                "CREDENTIALS_DIRECTORY",
            ),
            ("client_secret_file = 3".into(), "path of a file"),
            (
                format!(
                    "client_secret = \"x\"\nclient_secret_file = \"{}\"",
                    empty.display()
                ),
                "not both",
            ),
        ] {
            let mut t = table(&format!("[accounts]\n{text}\n"));
            let (key, message) = read_files(&mut t, None).expect_err(words);
            assert_eq!(key, ["accounts", "client_secret_file"], "{words}");
            assert!(message.contains(words), "{words}: {message}");
        }
    }

    #[test]
    fn a_file_key_of_a_key_that_is_not_secret_is_left_alone() {
        let mut t = table("[accounts]\nscope_file = \"/x\"\n");
        assert!(read_files(&mut t, None).expect("nothing read").is_empty());
        assert!(
            t["accounts"].get("scope_file").is_some(),
            "refused later as unknown"
        );
    }
}
