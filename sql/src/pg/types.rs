//! Arrow types as Postgres types, and `$n` parameters of the extended protocol.

use crate::SqlError;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::FieldInfo;
use pgwire::api::Type;
use pgwire::error::PgWireError;

/// The Postgres type a column of `data_type` is sent as.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 => Type::DATE,
        DataType::Binary | DataType::LargeBinary => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// The Arrow type a parameter of Postgres type `t` is read as.
pub(super) fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Millisecond, None),
        Type::DATE => DataType::Date32,
        Type::BYTEA => DataType::Binary,
        _ => return None,
    })
}

pub(super) fn fields(out_schema: &arrow::datatypes::Schema, format: &Format) -> Result<Vec<FieldInfo>, SqlError> {
    if let Format::Individual(codes) = format {
        if codes.len() != out_schema.fields().len() {
            return Err(SqlError::Parameter(format!(
                "{} result format codes for {} columns",
                codes.len(),
                out_schema.fields().len()
            )));
        }
    }
    Ok(out_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format.format_for(i)))
        .collect())
}

/// `$1`, `$2`, … types DataFusion inferred, by position.
pub(super) fn param_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, SqlError> {
    let types = plan.get_parameter_types()?;
    let mut out = Vec::new();
    for (name, t) in types {
        let Some(i) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|i| *i >= 1 && *i <= 65_535)
        else {
            continue;
        };
        if out.len() < i {
            out.resize(i, None);
        }
        out[i - 1] = t;
    }
    Ok(out)
}

pub(super) fn param_value(
    portal: &Portal<String>,
    i: usize,
    client: Option<&Type>,
    target: Option<&DataType>,
) -> Result<ScalarValue, SqlError> {
    let bad = |e: PgWireError| SqlError::Parameter(format!("${}: {e}", i + 1));
    let raw = portal.parameters.get(i).cloned().flatten();
    let value = match raw {
        None => {
            return Ok(target.map_or(ScalarValue::Utf8(None), |t| ScalarValue::try_from(t).unwrap_or(ScalarValue::Null)))
        }
        Some(bytes) if portal.parameter_format.is_binary(i) => {
            let t = client.cloned().unwrap_or(Type::TEXT);
            match t {
                Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &t).map_err(bad)?),
                Type::INT2 => ScalarValue::Int64(portal.parameter::<i16>(i, &t).map_err(bad)?.map(i64::from)),
                Type::INT4 => ScalarValue::Int64(portal.parameter::<i32>(i, &t).map_err(bad)?.map(i64::from)),
                Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &t).map_err(bad)?),
                Type::FLOAT4 => ScalarValue::Float64(portal.parameter::<f32>(i, &t).map_err(bad)?.map(f64::from)),
                Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &t).map_err(bad)?),
                Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ScalarValue::Utf8(Some(
                    String::from_utf8(bytes.to_vec()).map_err(|e| SqlError::Parameter(format!("${}: {e}", i + 1)))?,
                )),
                other => {
                    return Err(SqlError::Parameter(format!(
                        "${}: binary parameters of type {} are not supported; send text",
                        i + 1,
                        other.name()
                    )))
                }
            }
        }
        Some(bytes) => ScalarValue::Utf8(Some(
            String::from_utf8(bytes.to_vec()).map_err(|e| SqlError::Parameter(format!("${}: {e}", i + 1)))?,
        )),
    };
    match target {
        Some(t) if value.data_type() != *t => {
            value.cast_to(t).map_err(|e| SqlError::Parameter(format!("${}: cannot read {value} as {t}: {e}", i + 1)))
        }
        _ => Ok(value),
    }
}
