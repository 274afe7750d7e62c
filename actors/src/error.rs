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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error type of the crate says whether retrying helps (a new one
    /// is added here; the build fails if it does not implement `Transient`).
    #[test]
    fn every_error_says_whether_retrying_helps() {
        fn says<E: Transient + std::error::Error>() {}
        says::<crate::archive::ArchiveError>();
        says::<crate::archive::delta::DeltaError>();
        says::<crate::archive::manifest::ManifestError>();
        says::<crate::archive::RestoreError>();
        says::<crate::authority::OrderError>();
        says::<crate::jobs::queue::Full>();
        says::<crate::jobs::queue::NotQueued>();
        says::<crate::jobs::RunError>();
        says::<crate::jobs::plugin::JobError>();
        says::<crate::net::client::NetError>();
        says::<crate::net::client::RequestError>();
        says::<crate::net::swarm_key::SwarmKeyError>();
        says::<crate::offsite::BucketError>();
        says::<crate::offsite::sync::OffsiteError>();
        says::<crate::replica::restore::BadTarget>();
        says::<crate::replica::source::PeerProblem>();
        says::<crate::store::StoreError>();
        says::<BadSetting>();
        assert_eq!(crate::store::StoreError::Locked { path: "/d".into() }.retry(), Retry::Later);
        assert_eq!(crate::net::client::RequestError::BadPeer("x".into()).retry(), Retry::Never);
    }
}
