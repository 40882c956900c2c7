//! Functions whose result size an argument controls, with that size bounded
//! (the security issue's abuse limits): without the bound, one `select
//! repeat('x', 2147483647)` allocates gigabytes outside the memory pool, and
//! `array_repeat(1, 2147483647)` tens of them — enough for the allocator to
//! abort the process or the kernel to kill it, the dataflow with it.
//!
//! Each wrapper computes, before calling the function, what the call would
//! produce over all its rows, and refuses beyond the limit with SQLSTATE
//! 54000 (`program_limit_exceeded`):
//!
//! | function | bounded | limit |
//! |---|---|---|
//! | `repeat(s, n)` | Σ len(s)·n bytes | [`MAX_RESULT_BYTES`] |
//! | `lpad(s, n [, fill])`, `rpad(…)` | Σ n characters (4 bytes each at most) | [`MAX_RESULT_BYTES`] |
//! | `array_repeat(x, n)` | Σ n elements | [`MAX_ARRAY_ELEMENTS`] |
//! | `range(a, b [, step])`, `generate_series(…)` as arrays (integers) | Σ (b − a)/step elements | [`MAX_ARRAY_ELEMENTS`] |
//!
//! Also: a query text longer than [`MAX_STATEMENT_BYTES`] or with more than
//! [`MAX_STATEMENTS`] statements is refused (54000) before it is parsed, and
//! the Postgres endpoint takes at most `--sql-max-connections` connections
//! (53300 beyond).
//!
//! Literal arguments are checked when the statement is planned (constant
//! folding calls the function), so such a statement fails before it runs.
//! The table functions `generate_series` and `range` stream their rows in
//! batches and stay under the statement timeout.

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::kernels::{cast::cast, length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use std::sync::Arc;

/// The longest query text taken (one simple-query message or HTTP statement): 1 MiB.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// The most statements one simple-query message may hold.
pub const MAX_STATEMENTS: usize = 1000;

/// The most bytes one call of a bounded string function may produce over all its rows (64 MiB).
pub const MAX_RESULT_BYTES: i64 = 64 << 20;
/// The most elements one call of a bounded array function may produce over all its rows (16 M).
pub const MAX_ARRAY_ELEMENTS: i64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(s, n)`: len(s) × n bytes.
    Repeat,
    /// `lpad`/`rpad(s, n, …)`: n characters.
    Pad,
    /// `array_repeat(x, n)`: n elements.
    ArrayRepeat,
    /// `range`/`generate_series(a, b, step)`: (b − a) / step elements.
    Series,
}

/// A function with its result size checked first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Bound,
}

/// The argument as i64 values, one per row (nulls and non-integers as `None`).
fn ints(value: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array = value.to_array(rows)?;
    let ints = match cast(&array, &DataType::Int64) {
        Ok(a) => a,
        Err(_) => return Ok(vec![None; array.len()]),
    };
    let ints = ints.as_any().downcast_ref::<Int64Array>().ok_or_else(|| exec_datafusion_err!("not integers"))?;
    Ok((0..ints.len()).map(|i| ints.is_valid(i).then(|| ints.value(i))).collect())
}

/// The argument's byte lengths per row (strings and binaries; 0 for nulls and other types).
fn lens(value: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let array: ArrayRef = value.to_array(rows)?;
    let Ok(l) = length(&array) else { return Ok(vec![0; array.len()]) };
    let l = cast(&l, &DataType::Int64)?;
    let l = l.as_any().downcast_ref::<Int64Array>().ok_or_else(|| exec_datafusion_err!("no lengths"))?;
    Ok((0..l.len()).map(|i| if l.is_valid(i) { l.value(i) } else { 0 }).collect())
}

impl Bounded {
    /// What the call would produce, in the bound's unit, and the limit.
    fn size(&self, args: &[ColumnarValue], rows: usize) -> Result<(i64, i64)> {
        let rows = rows.max(1);
        let sat = |a: i64, b: i64| a.saturating_mul(b);
        Ok(match self.bound {
            Bound::Repeat => {
                let (s, n) = (lens(&args[0], rows)?, ints(&args[1], rows)?);
                let total = s.iter().zip(n).fold(0i64, |t, (l, n)| t.saturating_add(sat(*l, n.unwrap_or(0).max(0))));
                (total, MAX_RESULT_BYTES)
            }
            Bound::Pad => {
                let n = ints(&args[1], rows)?;
                let total = n.iter().fold(0i64, |t, n| t.saturating_add(sat(n.unwrap_or(0).max(0), 4)));
                (total, MAX_RESULT_BYTES)
            }
            Bound::ArrayRepeat => {
                let n = ints(&args[1], rows)?;
                (n.iter().fold(0i64, |t, n| t.saturating_add(n.unwrap_or(0).max(0))), MAX_ARRAY_ELEMENTS)
            }
            Bound::Series => {
                // One argument: 0..a; two: a..b; three: a..b by step (integers only; other kinds,
                // dates and timestamps by intervals, are left to the memory of their callers).
                let (start, stop, step) = match args.len() {
                    1 => (vec![Some(0); rows], ints(&args[0], rows)?, vec![Some(1); rows]),
                    2 => (ints(&args[0], rows)?, ints(&args[1], rows)?, vec![Some(1); rows]),
                    _ => (ints(&args[0], rows)?, ints(&args[1], rows)?, ints(&args[2], rows)?),
                };
                let mut total = 0i64;
                for i in 0..start.len().min(stop.len()).min(step.len()) {
                    if let (Some(a), Some(b), Some(s)) = (start[i], stop[i], step[i]) {
                        if s != 0 {
                            let n = (i128::from(b) - i128::from(a)) / i128::from(s);
                            total = total.saturating_add(n.clamp(0, i128::from(i64::MAX)) as i64);
                        }
                    }
                }
                (total, MAX_ARRAY_ELEMENTS)
            }
        })
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // (The wrapped functions do not rewrite themselves: an unchanged call keeps the bound.)
        self.inner.simplify(args, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (size, limit) = self.size(&args.args, args.number_rows)?;
        if size > limit {
            let unit = match self.bound {
                Bound::Repeat | Bound::Pad => "bytes",
                Bound::ArrayRepeat | Bound::Series => "elements",
            };
            return Err(exec_datafusion_err!(
                "program_limit_exceeded: {}() would produce {size} {unit}; one call may produce at most {limit}",
                self.inner.name()
            ));
        }
        self.inner.invoke_with_args(args)
    }
}

/// Replaces the functions of the table above in `context` with their bounded versions.
pub fn bound_functions(context: &datafusion::prelude::SessionContext) -> Result<()> {
    for (name, bound) in [
        ("repeat", Bound::Repeat),
        ("lpad", Bound::Pad),
        ("rpad", Bound::Pad),
        ("array_repeat", Bound::ArrayRepeat),
        ("range", Bound::Series),
        ("generate_series", Bound::Series),
    ] {
        if let Ok(inner) = context.udf(name) {
            context.register_udf(ScalarUDF::new_from_impl(Bounded { inner, bound }));
        }
    }
    Ok(())
}
