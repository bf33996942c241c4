//! What a durable write did, as the caller that acknowledges a client
//! sees it: nothing to wait for, a ticket the store makes durable with its
//! next group commit, or a refusal.

/// What a command's (or a data-plane change's) durable write did.
#[derive(Debug, Clone)]
pub enum Write {
    /// Nothing to write: a clean session, or persistence does not apply.
    None,
    /// Written; on disk once the store says this ticket is durable.
    Pending(porchlight_storage::Ticket),
    /// The write was refused (disk limit, I/O error): not durable.
    Failed(porchlight_storage::StorageError),
}

impl Write {
    pub fn from_result(
        r: Result<porchlight_storage::Ticket, porchlight_storage::StorageError>,
    ) -> Write {
        // The store logs a refusal once per change of its state
        // (`Store::check_writable`) and counts every one.
        match r {
            Ok(t) => Write::Pending(t),
            Err(e) => Write::Failed(e),
        }
    }

    /// Combines two writes made for one acknowledgement: the later ticket,
    /// and any failure wins.
    pub fn and(self, other: Write) -> Write {
        match (self, other) {
            (Write::Failed(e), _) | (_, Write::Failed(e)) => Write::Failed(e),
            (Write::Pending(a), Write::Pending(b)) => Write::Pending(a.max(b)),
            (Write::Pending(t), Write::None) | (Write::None, Write::Pending(t)) => {
                Write::Pending(t)
            }
            (Write::None, Write::None) => Write::None,
        }
    }
}
