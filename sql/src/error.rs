//! Errors of the SQL endpoint, saying whose fault they are.

use datafusion::error::DataFusionError;
use std::time::Duration;

/// An error of one SQL statement. [`SqlError::client_fault`] tells whether the
/// client's statement caused it (nothing for us to fix) or the server did.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse. Client's fault.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement parses but cannot be planned: unknown table or column,
    /// wrong types, unsupported feature. Client's fault.
    #[error("{0}")]
    Plan(String),
    /// The statement would write or change server state. Client's fault.
    #[error("cannot execute {0}: the TreeAI SQL endpoint is read-only")]
    ReadOnly(String),
    /// A parameter of the extended protocol could not be read. Client's fault.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// The query ran longer than the time limit. Client's fault (or an undersized limit).
    #[error("canceling statement due to statement timeout ({0:?})")]
    Timeout(Duration),
    /// The client cancelled the statement (a Postgres CancelRequest). Client's request.
    #[error("canceling statement due to user request")]
    Canceled,
    /// The query needed more memory than the limit. Client's fault (or an undersized limit).
    #[error("query exceeded the memory limit: {0}")]
    ResourcesExhausted(String),
    /// The query failed while running on its data (division by zero, bad cast…). Client's fault.
    #[error("{0}")]
    Execution(String),
    /// Something broke on our side. Server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SqlError {
    /// Whether the client's statement caused the error.
    pub fn client_fault(&self) -> bool {
        !matches!(self, SqlError::Internal(_))
    }

    /// The Postgres SQLSTATE code for the error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "42601",
            SqlError::Plan(m) if m.contains("not found") && m.contains("able") => "42P01",
            SqlError::Plan(m) if m.contains("No field named") || m.contains("Schema error") => "42703",
            SqlError::Plan(_) => "42000",
            SqlError::ReadOnly(_) => "25006",
            SqlError::Parameter(_) => "22023",
            SqlError::Timeout(_) | SqlError::Canceled => "57014",
            SqlError::ResourcesExhausted(_) => "53200",
            SqlError::Execution(m) if m.contains("Divide by zero") => "22012",
            SqlError::Execution(_) => "22000",
            SqlError::Internal(_) => "XX000",
        }
    }

    /// The outcome label of `treeai_sql_queries_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            SqlError::Timeout(_) => "timeout",
            SqlError::Canceled => "canceled",
            SqlError::ReadOnly(_) => "refused",
            SqlError::Internal(_) => "internal_error",
            _ => "error",
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        classify(&e)
    }
}

/// Classifies by the innermost DataFusion error (through contexts, shared
/// errors of repartitioned streams and Arrow's external errors).
fn classify(e: &DataFusionError) -> SqlError {
    let root = e.find_root();
    let message = || root.strip_backtrace();
    match root {
        DataFusionError::SQL(e, _) => SqlError::Syntax(e.to_string()),
        DataFusionError::Plan(m) => SqlError::Plan(m.clone()),
        DataFusionError::SchemaError(e, _) => SqlError::Plan(format!("Schema error: {e}")),
        DataFusionError::NotImplemented(m) => SqlError::Plan(format!("not supported: {m}")),
        DataFusionError::Configuration(m) => SqlError::Plan(m.clone()),
        DataFusionError::ResourcesExhausted(m) => SqlError::ResourcesExhausted(m.clone()),
        DataFusionError::ArrowError(e, _) => SqlError::Execution(e.to_string()),
        DataFusionError::Execution(m) => SqlError::Execution(m.clone()),
        DataFusionError::ExecutionJoin(_) | DataFusionError::Internal(_) | DataFusionError::IoError(_) => {
            SqlError::Internal(message())
        }
        _ => SqlError::Execution(message()),
    }
}
