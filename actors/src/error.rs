//! What every error of this crate says besides its words: whether trying
//! the same thing again can help. A caller retries (or tells its user to
//! try again later) only a [`Retry::Later`] error; a [`Retry::Never`] one
//! fails the same way until someone changes something.

/// Whether trying the same thing again can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It fails the same way until someone changes something: bad input,
    /// a refusal, something that does not exist.
    Never,
    /// It may work later: a peer down or slow, a full disk, a node stopping.
    Later,
}

/// An error that says whether retrying can help.
pub trait Transient {
    fn retry(&self) -> Retry;
}

/// A setting given in a form this node does not take (`--keep-within`,
/// `--quota`, …): permanent until the operator changes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(pub String);

impl Transient for BadSetting {
    fn retry(&self) -> Retry {
        Retry::Never
    }
}

impl Transient for backmesh_api::names::BadName {
    fn retry(&self) -> Retry {
        Retry::Never
    }
}
