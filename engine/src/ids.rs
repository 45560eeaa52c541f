//! Identifiers that are easy to mix up, as distinct types: both process ids are `i32` on the
//! wire, but one names a client session of this proxy and the other a PostgreSQL backend.

use std::fmt;

/// The process id a client was given in its BackendKeyData: the proxy's own, with the owning
/// shard in bits 22–29 (so a CancelRequest finds its shard). Never a PostgreSQL backend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientPid(pub i32);

impl ClientPid {
    /// A client pid for the `seq`-th client of shard `shard`.
    pub fn new(shard: usize, seq: u32) -> ClientPid {
        ClientPid(((shard as i32 & 0xFF) << 22) | (seq & 0x3F_FFFF) as i32)
    }

    /// The shard that owns this client.
    pub fn shard(self) -> usize {
        ((self.0 >> 22) & 0xFF) as usize
    }
}

/// A PostgreSQL backend's process id (a server connection's, from its BackendKeyData).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendPid(pub i32);

impl fmt::Display for ClientPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for BackendPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_pid_carries_its_shard() {
        for shard in [0, 1, 7, 255] {
            let p = ClientPid::new(shard, 12345);
            assert_eq!(p.shard(), shard);
            assert!(p.0 >= 0);
        }
    }
}
