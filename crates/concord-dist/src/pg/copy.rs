//! The COPY variant of the events insert: binary COPY into a temporary staging table (one per
//! connection, emptied at commit), then `INSERT … SELECT … ON CONFLICT DO NOTHING`.

use sqlx::PgConnection;

use super::insert::Columns;
use super::ArchiveError;

/// PostgreSQL's binary COPY header: signature, flags, header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

fn field(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ArchiveError> {
    let len = i32::try_from(bytes.len())
        .map_err(|_| ArchiveError::Invalid("a field longer than 2 GiB".into()))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

/// The rows in PostgreSQL's binary COPY format.
fn encode(cols: &Columns) -> Result<Vec<u8>, ArchiveError> {
    let size: usize = cols.data.iter().map(|d| d.len() + 128).sum();
    let mut buf = Vec::with_capacity(HEADER.len() + size + 2);
    buf.extend_from_slice(HEADER);
    for i in 0..cols.seq.len() {
        buf.extend_from_slice(&8i16.to_be_bytes());
        field(&mut buf, &cols.shard[i].to_be_bytes())?;
        field(&mut buf, cols.room[i].as_bytes())?;
        field(&mut buf, &cols.seq[i].to_be_bytes())?;
        field(&mut buf, cols.epoch[i].as_bytes())?;
        field(&mut buf, cols.hlc[i].as_bytes())?;
        field(&mut buf, cols.from[i].as_bytes())?;
        match &cols.op_id[i] {
            Some(op) => field(&mut buf, op.as_bytes())?,
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        field(&mut buf, cols.data[i].as_bytes())?;
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(buf)
}

pub(super) async fn insert(tx: &mut PgConnection, cols: &Columns) -> Result<(), ArchiveError> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS events_staging \
         (shard int2, room text, seq int8, epoch text, hlc text, from_client text, \
          op_id text, data text) ON COMMIT DELETE ROWS",
    )
    .execute(&mut *tx)
    .await?;
    let bytes = encode(cols)?;
    let mut copy = tx
        .copy_in_raw(
            "COPY events_staging (shard, room, seq, epoch, hlc, from_client, op_id, data) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(bytes).await?;
    copy.finish().await?;
    sqlx::query(
        "INSERT INTO events (shard, room, seq, epoch, hlc, from_client, op_id, data) \
         SELECT shard, room, seq, epoch, hlc, from_client, op_id, data FROM events_staging \
         ON CONFLICT (shard, room, seq) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    // ON COMMIT DELETE ROWS empties the staging table (a rollback discards its rows too).
    Ok(())
}
