//! Rows of record batches as Postgres `DataRow`s.

use super::types::fields;
use crate::{QueryOutput, SqlError};
use arrow::array::{
    Array, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt16Array, UInt32Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate};
use futures::{stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use std::sync::Arc;

macro_rules! arr {
    ($col:expr, $t:ty) => {
        $col.as_any().downcast_ref::<$t>().ok_or_else(|| PgWireError::ApiError("array type mismatch".into()))?
    };
}

fn encode_value(enc: &mut DataRowEncoder, col: &dyn Array, r: usize) -> PgWireResult<()> {
    if col.is_null(r) || col.data_type() == &DataType::Null {
        return enc.encode_field(&None::<i64>);
    }
    let micros = |v: i64, unit: &TimeUnit| match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1000,
    };
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&arr!(col, BooleanArray).value(r)),
        DataType::Int8 => enc.encode_field(&i16::from(arr!(col, Int8Array).value(r))),
        DataType::Int16 => enc.encode_field(&arr!(col, Int16Array).value(r)),
        DataType::UInt8 => enc.encode_field(&i16::from(arr!(col, UInt8Array).value(r))),
        DataType::Int32 => enc.encode_field(&arr!(col, Int32Array).value(r)),
        DataType::UInt16 => enc.encode_field(&i32::from(arr!(col, UInt16Array).value(r))),
        DataType::Int64 => enc.encode_field(&arr!(col, Int64Array).value(r)),
        DataType::UInt32 => enc.encode_field(&i64::from(arr!(col, UInt32Array).value(r))),
        DataType::Float32 => enc.encode_field(&arr!(col, Float32Array).value(r)),
        DataType::Float64 => enc.encode_field(&arr!(col, Float64Array).value(r)),
        DataType::Utf8 => enc.encode_field(&arr!(col, StringArray).value(r)),
        DataType::LargeUtf8 => enc.encode_field(&arr!(col, LargeStringArray).value(r)),
        DataType::Utf8View => enc.encode_field(&arr!(col, StringViewArray).value(r)),
        DataType::Binary => enc.encode_field(&arr!(col, BinaryArray).value(r)),
        DataType::LargeBinary => enc.encode_field(&arr!(col, LargeBinaryArray).value(r)),
        DataType::Date32 => {
            let days = arr!(col, Date32Array).value(r);
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|d| d.checked_add_signed(chrono::Duration::days(i64::from(days))))
                .ok_or_else(|| PgWireError::ApiError("date out of range".into()))?;
            enc.encode_field(&date)
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => arr!(col, TimestampSecondArray).value(r),
                TimeUnit::Millisecond => arr!(col, TimestampMillisecondArray).value(r),
                TimeUnit::Microsecond => arr!(col, TimestampMicrosecondArray).value(r),
                TimeUnit::Nanosecond => arr!(col, TimestampNanosecondArray).value(r),
            };
            let t = DateTime::from_timestamp_micros(micros(v, unit))
                .ok_or_else(|| PgWireError::ApiError("timestamp out of range".into()))?;
            if tz.is_some() {
                enc.encode_field(&t)
            } else {
                enc.encode_field(&t.naive_utc())
            }
        }
        _ => {
            let f = ArrayFormatter::try_new(col, &FormatOptions::default())
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
            enc.encode_field(&f.value(r).to_string())
        }
    }
}

/// The rows of one batch.
pub(super) fn encode_batch(fields: &Arc<Vec<FieldInfo>>, batch: &RecordBatch) -> Vec<PgWireResult<DataRow>> {
    let mut enc = DataRowEncoder::new(fields.clone());
    (0..batch.num_rows())
        .map(|r| {
            batch.columns().iter().try_for_each(|c| encode_value(&mut enc, c.as_ref(), r))?;
            Ok(enc.take_row())
        })
        .collect()
}

/// The rows of `out` as a pgwire query response.
pub(super) fn query_response(out: QueryOutput, format: &Format) -> Result<QueryResponse, SqlError> {
    let fields = Arc::new(fields(&out.schema, format)?);
    let rows: Vec<PgWireResult<DataRow>> = out.batches.iter().flat_map(|b| encode_batch(&fields, b)).collect();
    // The rows keep their share of the memory pool until they are sent.
    let reservation = out.reservation;
    Ok(QueryResponse::new(
        fields,
        stream::iter(rows).map(move |row| {
            let _held = &reservation;
            row
        }),
    ))
}
