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

/// One column of a batch, its Arrow type matched and its array downcast once
/// per batch; [`ColumnEncoder::encode`] then writes one cell.
enum Cells<'a> {
    /// `DataType::Null`: every cell is NULL.
    Null,
    Bool(&'a BooleanArray),
    Int8(&'a Int8Array),
    Int16(&'a Int16Array),
    UInt8(&'a UInt8Array),
    Int32(&'a Int32Array),
    UInt16(&'a UInt16Array),
    Int64(&'a Int64Array),
    UInt32(&'a UInt32Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    Date32(&'a Date32Array),
    /// Values in `unit`; `zoned`: timestamptz, else timestamp.
    Timestamp {
        values: &'a [i64],
        unit: TimeUnit,
        zoned: bool,
    },
    /// Any other type, as Arrow's text (`None`: the type has none; the error comes with its first cell).
    Text(Option<ArrayFormatter<'a>>),
}

/// The encoder of one column of a batch.
struct ColumnEncoder<'a> {
    array: &'a dyn Array,
    cells: Cells<'a>,
}

fn downcast<T: 'static>(col: &dyn Array) -> PgWireResult<&T> {
    col.as_any().downcast_ref::<T>().ok_or_else(|| PgWireError::ApiError("array type mismatch".into()))
}

impl<'a> ColumnEncoder<'a> {
    fn new(col: &'a dyn Array) -> PgWireResult<Self> {
        let cells = match col.data_type() {
            DataType::Null => Cells::Null,
            DataType::Boolean => Cells::Bool(downcast(col)?),
            DataType::Int8 => Cells::Int8(downcast(col)?),
            DataType::Int16 => Cells::Int16(downcast(col)?),
            DataType::UInt8 => Cells::UInt8(downcast(col)?),
            DataType::Int32 => Cells::Int32(downcast(col)?),
            DataType::UInt16 => Cells::UInt16(downcast(col)?),
            DataType::Int64 => Cells::Int64(downcast(col)?),
            DataType::UInt32 => Cells::UInt32(downcast(col)?),
            DataType::Float32 => Cells::Float32(downcast(col)?),
            DataType::Float64 => Cells::Float64(downcast(col)?),
            DataType::Utf8 => Cells::Utf8(downcast(col)?),
            DataType::LargeUtf8 => Cells::LargeUtf8(downcast(col)?),
            DataType::Utf8View => Cells::Utf8View(downcast(col)?),
            DataType::Binary => Cells::Binary(downcast(col)?),
            DataType::LargeBinary => Cells::LargeBinary(downcast(col)?),
            DataType::Date32 => Cells::Date32(downcast(col)?),
            DataType::Timestamp(unit, tz) => {
                let values: &[i64] = match unit {
                    TimeUnit::Second => downcast::<TimestampSecondArray>(col)?.values(),
                    TimeUnit::Millisecond => downcast::<TimestampMillisecondArray>(col)?.values(),
                    TimeUnit::Microsecond => downcast::<TimestampMicrosecondArray>(col)?.values(),
                    TimeUnit::Nanosecond => downcast::<TimestampNanosecondArray>(col)?.values(),
                };
                Cells::Timestamp { values, unit: *unit, zoned: tz.is_some() }
            }
            _ => Cells::Text(ArrayFormatter::try_new(col, &FormatOptions::default()).ok()),
        };
        Ok(ColumnEncoder { array: col, cells })
    }

    /// Writes the cell of row `r`.
    fn encode(&self, enc: &mut DataRowEncoder, r: usize) -> PgWireResult<()> {
        if matches!(self.cells, Cells::Null) || self.array.is_null(r) {
            return enc.encode_field(&None::<i64>);
        }
        match &self.cells {
            Cells::Null => enc.encode_field(&None::<i64>),
            Cells::Bool(a) => enc.encode_field(&a.value(r)),
            Cells::Int8(a) => enc.encode_field(&i16::from(a.value(r))),
            Cells::Int16(a) => enc.encode_field(&a.value(r)),
            Cells::UInt8(a) => enc.encode_field(&i16::from(a.value(r))),
            Cells::Int32(a) => enc.encode_field(&a.value(r)),
            Cells::UInt16(a) => enc.encode_field(&i32::from(a.value(r))),
            Cells::Int64(a) => enc.encode_field(&a.value(r)),
            Cells::UInt32(a) => enc.encode_field(&i64::from(a.value(r))),
            Cells::Float32(a) => enc.encode_field(&a.value(r)),
            Cells::Float64(a) => enc.encode_field(&a.value(r)),
            Cells::Utf8(a) => enc.encode_field(&a.value(r)),
            Cells::LargeUtf8(a) => enc.encode_field(&a.value(r)),
            Cells::Utf8View(a) => enc.encode_field(&a.value(r)),
            Cells::Binary(a) => enc.encode_field(&a.value(r)),
            Cells::LargeBinary(a) => enc.encode_field(&a.value(r)),
            Cells::Date32(a) => {
                let days = a.value(r);
                let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|d| d.checked_add_signed(chrono::Duration::days(i64::from(days))))
                    .ok_or_else(|| PgWireError::ApiError("date out of range".into()))?;
                enc.encode_field(&date)
            }
            Cells::Timestamp { values, unit, zoned } => {
                let v = values[r];
                let micros = match unit {
                    TimeUnit::Second => v.saturating_mul(1_000_000),
                    TimeUnit::Millisecond => v.saturating_mul(1000),
                    TimeUnit::Microsecond => v,
                    TimeUnit::Nanosecond => v / 1000,
                };
                let t = DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| PgWireError::ApiError("timestamp out of range".into()))?;
                if *zoned {
                    enc.encode_field(&t)
                } else {
                    enc.encode_field(&t.naive_utc())
                }
            }
            Cells::Text(Some(f)) => enc.encode_field(&f.value(r).to_string()),
            Cells::Text(None) => match ArrayFormatter::try_new(self.array, &FormatOptions::default()) {
                Ok(f) => enc.encode_field(&f.value(r).to_string()),
                Err(e) => Err(PgWireError::ApiError(Box::new(e))),
            },
        }
    }
}

/// The rows of one batch. Each column's type is matched once (a
/// [`ColumnEncoder`] per column), then the rows are walked.
pub(super) fn encode_batch(fields: &Arc<Vec<FieldInfo>>, batch: &RecordBatch) -> Vec<PgWireResult<DataRow>> {
    let columns = match batch.columns().iter().map(|c| ColumnEncoder::new(c.as_ref())).collect::<PgWireResult<Vec<_>>>()
    {
        Ok(columns) => columns,
        Err(e) if batch.num_rows() > 0 => return vec![Err(e)],
        Err(_) => return vec![],
    };
    let mut enc = DataRowEncoder::new(fields.clone());
    (0..batch.num_rows())
        .map(|r| {
            columns.iter().try_for_each(|c| c.encode(&mut enc, r))?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::encode_batch;
    use crate::pg::types::fields;
    use arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int16Array,
        Int32Array, Int64Array, Int8Array, LargeBinaryArray, LargeStringArray, NullArray, StringArray, StringViewArray,
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
        UInt16Array, UInt32Array, UInt64Array, UInt8Array,
    };
    use arrow::record_batch::RecordBatch;
    use pgwire::api::portal::Format;
    use std::sync::Arc;

    /// Three rows of every type the encoder knows, NULLs and edge values included.
    pub(crate) fn every_type() -> RecordBatch {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("bool", Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]))),
            ("i8", Arc::new(Int8Array::from(vec![Some(-128), Some(0), None]))),
            ("i16", Arc::new(Int16Array::from(vec![None, Some(i16::MAX), Some(-1)]))),
            ("u8", Arc::new(UInt8Array::from(vec![Some(255), None, Some(0)]))),
            ("i32", Arc::new(Int32Array::from(vec![Some(i32::MIN), Some(7), None]))),
            ("u16", Arc::new(UInt16Array::from(vec![Some(u16::MAX), None, Some(1)]))),
            ("i64", Arc::new(Int64Array::from(vec![Some(i64::MAX), Some(-42), None]))),
            ("u32", Arc::new(UInt32Array::from(vec![None, Some(u32::MAX), Some(3)]))),
            ("u64", Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, Some(5)]))),
            ("f32", Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::NAN), None]))),
            ("f64", Arc::new(Float64Array::from(vec![Some(42.5), Some(f64::INFINITY), Some(-0.1)]))),
            ("utf8", Arc::new(StringArray::from(vec![Some("T-1"), None, Some("é ü")]))),
            ("large", Arc::new(LargeStringArray::from(vec![Some(""), Some("x"), None]))),
            ("view", Arc::new(StringViewArray::from(vec![Some("a longer string than twelve"), None, Some("b")]))),
            ("bin", Arc::new(BinaryArray::from(vec![Some(&b"\x00\xff"[..]), None, Some(&b""[..])]))),
            ("lbin", Arc::new(LargeBinaryArray::from(vec![None, Some(&b"ab"[..]), Some(&b"\x01"[..])]))),
            ("date", Arc::new(Date32Array::from(vec![Some(20_412), None, Some(-1)]))),
            (
                "ts_s",
                Arc::new(TimestampSecondArray::from(vec![Some(1_795_600_200), None, Some(0)]).with_timezone("UTC")),
            ),
            (
                "ts_ms",
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_795_600_200_123), Some(-1), None]).with_timezone("UTC"),
                ),
            ),
            ("ts_us", Arc::new(TimestampMicrosecondArray::from(vec![Some(1_795_600_200_123_456), None, Some(1)]))),
            (
                "ts_ns",
                Arc::new(
                    TimestampNanosecondArray::from(vec![None, Some(1_795_600_200_123_456_789), Some(999)])
                        .with_timezone("+02:00"),
                ),
            ),
            ("null", Arc::new(NullArray::new(3))),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), None, Some(-5)]).with_precision_and_scale(10, 2).unwrap(),
                ),
            ),
        ];
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of every row, in text and in binary format.
    fn wire(batch: &RecordBatch) -> Vec<String> {
        let mut out = Vec::new();
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let fields = Arc::new(fields(&batch.schema(), &format).unwrap());
            for row in encode_batch(&fields, batch) {
                let row = row.unwrap();
                out.push(format!("{} {}", row.field_count, hex(&row.data)));
            }
        }
        out
    }

    /// The text and binary bytes of the rows, per column as they were encoded
    /// cell by cell (the encoder before it matched each column's type once).
    #[test]
    fn every_type_encodes_to_the_bytes_of_the_cell_by_cell_encoder() {
        let want = [
            "23 0000000174000000042d313238ffffffff000000033235350000000b2d323134373438333634380000000536353533350000001339323233333732303336383534373735383037ffffffff00000014313834343637343430373337303935353136313500000003312e350000000434322e3500000003542d31000000000000001b61206c6f6e67657220737472696e67207468616e207477656c7665000000065c7830306666ffffffff0000000a323032352d31312d32300000001d323032362d31312d32352030393a35303a30302e3030303030302b30300000001d323032362d31312d32352030393a35303a30302e3132333030302b30300000001a323032362d31312d32352030393a35303a30302e313233343536ffffffffffffffff000000063132332e3435",
            "23 ffffffff0000000130000000053332373637ffffffff0000000137ffffffff000000032d34320000000a34323934393637323935ffffffff000000034e614e00000003696e66ffffffff0000000178ffffffffffffffff000000065c7836313632ffffffffffffffff0000001d313936392d31322d33312032333a35393a35392e3939393030302b3030ffffffff0000001d323032362d31312d32352030393a35303a30302e3132333435362b3030ffffffffffffffff",
            "23 0000000166ffffffff000000022d310000000130ffffffff0000000131ffffffff00000001330000000135ffffffff000000042d302e3100000005c3a920c3bcffffffff0000000162000000025c78000000045c7830310000000a313936392d31322d33310000001d313937302d30312d30312030303a30303a30302e3030303030302b3030ffffffff0000001a313937302d30312d30312030303a30303a30302e3030303030310000001d313937302d30312d30312030303a30303a30302e3030303030302b3030ffffffff000000052d302e3035",
            "23 000000010100000002ff80ffffffff0000000200ff0000000480000000000000040000ffff000000087fffffffffffffffffffffff000000143138343436373434303733373039353531363135000000043fc0000000000008404540000000000000000003542d31000000000000001b61206c6f6e67657220737472696e67207468616e207477656c76650000000200ffffffffff00000004000024ef000000080003041584dc8200000000080003041584de6278000000080003041584de6440ffffffffffffffff000000063132332e3435",
            "23 ffffffff000000020000000000027fffffffffff0000000400000007ffffffff00000008ffffffffffffffd60000000800000000ffffffffffffffff000000047fc00000000000087ff0000000000000ffffffff0000000178ffffffffffffffff000000026162ffffffffffffffff00000008fffca2fec4c81c18ffffffff000000080003041584de6440ffffffffffffffff",
            "23 0000000100ffffffff00000002ffff000000020000ffffffff0000000400000001ffffffff0000000800000000000000030000000135ffffffff00000008bfb999999999999a00000005c3a920c3bcffffffff000000016200000000000000010100000004ffffd53200000008fffca2fec4c82000ffffffff00000008fffca2fec4c8200100000008fffca2fec4c82000ffffffff000000052d302e3035",
        ];
        assert_eq!(wire(&every_type()), want);
    }
}
