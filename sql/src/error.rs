//! Errors of the SQL endpoint, saying whose fault they are.
//!
//! The SQLSTATE of an error follows from its variant ([`SqlError::sqlstate`]),
//! and the variant from DataFusion's typed errors, never from their text:
//! `SchemaError::FieldNotFound` is an undefined column (42703), an ambiguous
//! or duplicate field 42702 / 42701, Arrow's `DivideByZero` 22012 and
//! `ArithmeticOverflow` 22003. DataFusion reports an unknown table only as a
//! plan error's text, so the engine checks a statement's tables itself before
//! planning it ([`crate::Engine::plan`]) and raises
//! [`SqlError::UndefinedTable`] (42P01).

use arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use std::time::Duration;

/// An error of one SQL statement. [`SqlError::client_fault`] tells whether the
/// client's statement caused it (nothing for us to fix) or the server did.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse. Client's fault.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement parses but cannot be planned: wrong types, unsupported
    /// feature. Client's fault.
    #[error("{0}")]
    Plan(String),
    /// The statement names a table no schema holds. Client's fault.
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// The statement names a column its tables do not have. Client's fault.
    #[error("{0}")]
    UndefinedColumn(String),
    /// A column name matches columns of several tables. Client's fault.
    #[error("{0}")]
    AmbiguousColumn(String),
    /// Two output or input columns have the same name. Client's fault.
    #[error("{0}")]
    DuplicateColumn(String),
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
    /// An integer division (or remainder) by zero. Client's fault.
    #[error("{0}")]
    DivisionByZero(String),
    /// An arithmetic result out of its type's range. Client's fault.
    #[error("{0}")]
    NumericOverflow(String),
    /// A function would have produced more than one call may (see [`crate::limits`]).
    /// Client's fault.
    #[error("{0}")]
    LimitExceeded(String),
    /// The query failed while running on its data (bad cast…). Client's fault.
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
            SqlError::Plan(_) => "42000",
            SqlError::UndefinedTable(_) => "42P01",
            SqlError::UndefinedColumn(_) => "42703",
            SqlError::AmbiguousColumn(_) => "42702",
            SqlError::DuplicateColumn(_) => "42701",
            SqlError::ReadOnly(_) => "25006",
            SqlError::Parameter(_) => "22023",
            SqlError::Timeout(_) | SqlError::Canceled => "57014",
            SqlError::ResourcesExhausted(_) => "53200",
            SqlError::DivisionByZero(_) => "22012",
            SqlError::NumericOverflow(_) => "22003",
            SqlError::LimitExceeded(_) => "54000",
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
        DataFusionError::SchemaError(e, _) => {
            let message = format!("Schema error: {e}");
            match e.as_ref() {
                SchemaError::FieldNotFound { .. } => SqlError::UndefinedColumn(message),
                SchemaError::AmbiguousReference { .. } => SqlError::AmbiguousColumn(message),
                SchemaError::DuplicateQualifiedField { .. } | SchemaError::DuplicateUnqualifiedField { .. } => {
                    SqlError::DuplicateColumn(message)
                }
            }
        }
        DataFusionError::NotImplemented(m) => SqlError::Plan(format!("not supported: {m}")),
        DataFusionError::Configuration(m) => SqlError::Plan(m.clone()),
        DataFusionError::ResourcesExhausted(m) => SqlError::ResourcesExhausted(m.clone()),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero => SqlError::DivisionByZero(e.to_string()),
            ArrowError::ArithmeticOverflow(_) => SqlError::NumericOverflow(e.to_string()),
            _ => SqlError::Execution(e.to_string()),
        },
        DataFusionError::Execution(m) if m.starts_with("program_limit_exceeded: ") => {
            SqlError::LimitExceeded(m.trim_start_matches("program_limit_exceeded: ").to_string())
        }
        DataFusionError::Execution(m) => SqlError::Execution(m.clone()),
        DataFusionError::ExecutionJoin(_) | DataFusionError::Internal(_) | DataFusionError::IoError(_) => {
            SqlError::Internal(message())
        }
        _ => SqlError::Execution(message()),
    }
}
