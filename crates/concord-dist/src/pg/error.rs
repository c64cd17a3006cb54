//! `ArchiveError` and the line between a refusal (PostgreSQL rejects this data: retrying the
//! same rows will fail again) and a transient failure (connection, deadlock, shutdown).

/// An error of the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("the cluster was created with {stored} partitions, not {given}")]
    PartitionsMismatch { stored: i32, given: u32 },
}

impl ArchiveError {
    /// True when PostgreSQL refused the data itself (a constraint, an invalid byte, a value out
    /// of range): the same rows would be refused again. Connection failures, timeouts,
    /// deadlocks, serialization failures and server shutdowns are transient: not refusals.
    pub fn is_refusal(&self) -> bool {
        match self {
            ArchiveError::Db(sqlx::Error::Database(e)) => {
                let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
                // 08 connection, 40 rollback (deadlock, serialization), 53 resources,
                // 57 operator intervention (shutdown, statement timeout), 58 system error,
                // 55P03 lock not available, 25P03 idle-in-transaction timeout: transient.
                !["08", "40", "53", "57", "58", "55P03", "25P03"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }
            ArchiveError::Db(sqlx::Error::Encode(_)) | ArchiveError::Invalid(_) => true,
            _ => false,
        }
    }
}
