//! This data directory's data key (`DATA_DIR/data.key`, docs/encryption.md):
//! what seals its own encrypted archives. Loaded when the store opens if
//! the file is there (archives sealed under it stay readable whatever the
//! node's `encrypt` setting); made when encryption is turned on.

use std::sync::OnceLock;

use backmesh_crypt::keyfile::{self, KeyFileError};
use backmesh_crypt::DataKey;

use super::{Store, StoreError};

/// The file's name in the data directory.
pub const DATA_KEY_FILE: &str = "data.key";

impl Store {
    /// Loads `data.key` if it exists (refused if other users may read it).
    pub(crate) fn load_data_key(&self) -> Result<(), StoreError> {
        let path = self.root.join(DATA_KEY_FILE);
        if !path.exists() {
            return Ok(());
        }
        let key = keyfile::load(&path).map_err(key_error)?;
        let _ = self.data_key.set(key);
        Ok(())
    }

    /// This data directory's data key, made now (0600, never replaced) if
    /// it has none.
    pub fn make_data_key(&self) -> Result<&DataKey, StoreError> {
        if let Some(k) = self.data_key.get() {
            return Ok(k);
        }
        let key = keyfile::load_or_create(&self.root.join(DATA_KEY_FILE)).map_err(key_error)?;
        Ok(self.data_key.get_or_init(|| key))
    }

    /// This data directory's data key, if it has one.
    pub fn data_key(&self) -> Option<&DataKey> {
        self.data_key.get()
    }

    /// The key an encrypted archive of this node's with key id `kid` is
    /// opened with, if this node holds it.
    pub fn data_key_for(&self, kid: &[u8; 8]) -> Option<&DataKey> {
        self.data_key().filter(|k| k.id_bytes() == *kid)
    }
}

impl Store {
    /// The key archive `m` is opened with here: `None` for a plain
    /// archive, or one sealed under a key this node does not hold.
    pub fn key_for_archive(&self, m: &crate::archive::Manifest) -> Option<&DataKey> {
        m.crypt.as_ref().and_then(|c| self.data_key_for(&c.kid))
    }
}

fn key_error(e: KeyFileError) -> StoreError {
    let path = match &e {
        KeyFileError::Read { path, .. }
        | KeyFileError::Write { path, .. }
        | KeyFileError::Exposed { path, .. }
        | KeyFileError::Malformed { path, .. } => path.clone(),
    };
    StoreError::Identity { path, reason: e.to_string() }
}

/// An empty slot for the key, as a store opens.
pub(crate) fn slot() -> OnceLock<DataKey> {
    OnceLock::new()
}
