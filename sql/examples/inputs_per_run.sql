-- What each run read: rows per source file and photo folder, loaded or quarantined.
-- `balanced` must always be true: every row read ends up in exactly one place.
with ledger as (
    select * from ingest_ledger
),

final as (
    select
        run_id,
        source,
        rows_read,
        rows_loaded,
        rows_quarantined,
        rows_read = rows_loaded + rows_quarantined  as balanced
    from ledger
)

select * from final
order by run_id desc, source;
