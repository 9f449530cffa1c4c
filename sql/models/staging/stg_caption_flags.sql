-- This run's compliance verdict on every caption: the rows tasks/compliance.py wrote to
-- the text_flags history table for the run being built (var run_id).
with source as (
    select * from {{ source('history', 'text_flags') }}
    where run_id = '{{ run_id() }}' and text_kind = 'caption'
),

final as (
    select
        text_id     as caption_id,
        flagged,
        rule,
        matched
    from source
)

select * from final
