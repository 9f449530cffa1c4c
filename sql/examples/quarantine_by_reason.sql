-- Input rows and photos that were not loaded, per run, source and reason, with one
-- example line to start fixing from.  An empty result means every input was loaded.
with quarantine as (
    select * from quarantine
),

final as (
    select
        run_id,
        source,
        reason,
        count(*)                    as rows_quarantined,
        min(line_no)                as first_line,
        arg_min(raw_line, line_no)  as example
    from quarantine
    group by run_id, source, reason
)

select * from final
order by run_id desc, rows_quarantined desc, source;
