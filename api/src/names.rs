//! The names that cross node boundaries — node names, backed-up paths,
//! archive ids — as types that can only hold a valid one. A request or
//! entry that carries an invalid one does not decode: it is refused where
//! it enters, before any code joins it into a path or a key.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name is not valid, in words for the person who typed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadName(pub String);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadName {}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// `text` as this type, or why it is not valid.
            pub fn parse(text: impl Into<String>) -> Result<Self, BadName> {
                let text = text.into();
                $check(&text)?;
                Ok($name(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = BadName;
            fn try_from(text: String) -> Result<Self, BadName> {
                $name::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

name_type!(
    /// A node's name: 1 to 64 characters, none of them whitespace or
    /// control characters.
    NodeName,
    check_node_name
);

name_type!(
    /// What a series backs up (a directory, or the key of a command or
    /// plugin job): 1 to 4,096 bytes without control characters.
    SeriesPath,
    check_series_path
);

name_type!(
    /// An archive's id, safe as a file name: 1 to 64 ASCII letters, digits,
    /// `.`, `_` or `-`, starting with a letter or digit (so never `..`).
    ArchiveId,
    check_archive_id
);

pub fn check_node_name(name: &str) -> Result<(), BadName> {
    let chars = name.chars().count();
    if chars == 0 || chars > 64 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadName(format!("bad node name {name:?}: use 1 to 64 characters without spaces")));
    }
    Ok(())
}

pub fn check_series_path(path: &str) -> Result<(), BadName> {
    if path.is_empty() || path.len() > 4096 || path.chars().any(char::is_control) {
        let shown: String = path.chars().take(80).collect();
        return Err(BadName(format!("bad path {shown:?}: use 1 to 4096 bytes without control characters")));
    }
    Ok(())
}

pub fn check_archive_id(id: &str) -> Result<(), BadName> {
    let b = id.as_bytes();
    let ok = (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        let shown: String = id.chars().take(80).collect();
        return Err(BadName(format!("{shown:?} is not a valid archive id")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_names_paths_and_ids_can_be_made_or_decoded() {
        for bad in ["", "a b", "tab\t", "new\nline", &"n".repeat(65)] {
            assert!(NodeName::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["n1", "web-1.paris", "é", &"n".repeat(64)] {
            assert_eq!(NodeName::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "/srv/a\nb", "\0", &"/".repeat(4097)] {
            assert!(SeriesPath::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["/srv/app", "/srv/with space", "db-dump", "../relative is only a key"] {
            assert!(SeriesPath::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["../x", "..", ".hidden", "a/b", "", "a\0b", "a b", &"x".repeat(65), "é"] {
            assert!(ArchiveId::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["20261122T040113.000Z-0a1b2c3d", "a", "A.b_c-d"] {
            assert!(ArchiveId::parse(good).is_ok(), "{good:?}");
        }
        // On the wire they are plain strings; a bad one does not decode.
        let id: ArchiveId = serde_json::from_str("\"20261122T040113.000Z-0a1b2c3d\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"20261122T040113.000Z-0a1b2c3d\"");
        let e = serde_json::from_str::<ArchiveId>("\"../../escape\"").unwrap_err();
        assert!(e.to_string().contains("not a valid archive id"), "{e}");
    }
}
