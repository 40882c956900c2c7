//! Streamed query responses: rows encoded and sent batch by batch under the
//! statement's time limit, and the cancel of a statement whose rows stream.

use super::encode::encode_batch;
use super::pg_error;
use crate::SqlError;
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{stream, StreamExt};
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::api::{ClientInfo, ConnectionHandle};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use std::sync::Arc;
use tokio::sync::watch;

/// Set to `true` when the client cancels the statements of one request whose
/// rows still stream.
pub(super) type CancelSignal = watch::Receiver<bool>;

/// Resolves when `signal` says cancelled; never when its sender is gone
/// without a cancel.
async fn cancelled(mut signal: CancelSignal) {
    if signal.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Re-arms the connection's cancel handle for rows that stream after the
/// handler returns, when a response holds `signal`'s receivers.
///
/// pgwire races the handler's future against a cancel receiver it installed
/// before calling the handler; that future ends when the response is built,
/// before streamed rows are sent. Installing a new receiver drops pgwire's
/// sender, which is harmless only because this is the handler's last step:
/// `futures::select` polls the handler first, and it is ready in that same poll.
pub(super) async fn arm_cancel<C: ClientInfo>(client: &C, signal: watch::Sender<bool>) {
    if signal.receiver_count() == 0 {
        return;
    }
    if let Some(handle) = client.session_extensions().get::<Arc<ConnectionHandle>>() {
        let request = handle.start_query().await;
        // Ends when a cancel comes or the next statement replaces the receiver.
        tokio::spawn(async move {
            if request.await.is_ok() {
                let _ = signal.send(true);
            }
        });
    }
}

/// Rows encoded ahead of the client, in chunks of one batch.
const CHUNKS_AHEAD: usize = 4;

/// The next batch of `stream`, unless the deadline passes first.
pub(super) async fn next_batch(
    stream: &mut SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
) -> Result<Option<RecordBatch>, SqlError> {
    match tokio::time::timeout_at(deadline, stream.next()).await {
        Err(_) => Err(SqlError::Timeout(limit)),
        Ok(None) => Ok(None),
        Ok(Some(batch)) => Ok(Some(batch?)),
    }
}

/// A query response that streams `stream`'s rows, starting with `first`; a
/// task encodes batches ahead of the client and stops when the client goes
/// away or the deadline passes.
pub(super) fn streamed_response(
    fields: Arc<Vec<FieldInfo>>,
    first: RecordBatch,
    mut stream: SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
    cancel: CancelSignal,
    record: impl FnOnce(Option<&SqlError>) + Send + 'static,
) -> QueryResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<PgWireResult<DataRow>>>(CHUNKS_AHEAD);
    let encoder_fields = fields.clone();
    // Until the producer says how it ended, the rows end with an internal error: a producer
    // that panics or is dropped never yields a silently short result.
    let unfinished = PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
        "ERROR".into(),
        "XX000".into(),
        "the statement's rows ended unexpectedly".into(),
    )));
    let failed = Arc::new(std::sync::Mutex::new(Some(unfinished)));
    let failed_slot = failed.clone();
    tokio::spawn(async move {
        let end = async {
            // The client is gone (or the response was dropped): dropping the stream stops the query.
            // A client that stops reading holds the send: at the deadline the query and its
            // snapshot go, and the statement counts as timed out.
            let tx = &tx;
            let send = move |chunk| async move {
                match tokio::time::timeout_at(deadline, tx.send(chunk)).await {
                    Ok(sent) => sent.map_err(|_| SqlError::Canceled),
                    Err(_) => Err(SqlError::Timeout(limit)),
                }
            };
            send(encode_batch(&encoder_fields, &first)).await?;
            loop {
                let next = tokio::select! {
                    biased;
                    // The response was dropped (cancelled before it was sent, a send failed, the
                    // client went away): stop the query now rather than at the next batch.
                    () = tx.closed() => Err(SqlError::Canceled),
                    () = cancelled(cancel.clone()) => Err(SqlError::Canceled),
                    next = next_batch(&mut stream, deadline, limit) => next,
                };
                let chunk = match next {
                    Ok(Some(batch)) => encode_batch(&encoder_fields, &batch),
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                };
                send(chunk).await?;
            }
        }
        .await;
        // The error goes beside the channel, which a client that stopped reading keeps full:
        // the rows end with it once those queued are sent (never a silently short result).
        *failed_slot.lock().unwrap_or_else(|p| p.into_inner()) = end.as_ref().err().map(pg_error);
        record(end.as_ref().err());
    });
    let rows = stream::unfold((rx, failed), |(mut rx, failed)| async move {
        match rx.recv().await {
            Some(chunk) => Some((chunk, (rx, failed))),
            None => {
                let error = failed.lock().unwrap_or_else(|p| p.into_inner()).take()?;
                Some((vec![Err(error)], (rx, failed)))
            }
        }
    })
    .flat_map(stream::iter);
    QueryResponse::new(fields, rows)
}
