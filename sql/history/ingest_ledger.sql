-- Per run and source: rows read = rows loaded + rows quarantined.
create table if not exists ingest_ledger (
    run_id           varchar,
    source           varchar,
    rows_read        bigint,
    rows_loaded      bigint,
    rows_quarantined bigint
)
