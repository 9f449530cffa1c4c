-- The law: a saved query that describes a child is answered with exactly one row, no photo,
-- and the disclaimer.  Fails with every flagged query of any run that breaks this.
with flagged as (
    select run_id, text_id as query_id from {{ source('history', 'text_flags') }}
    where text_kind = 'query' and flagged
      -- refused queries (tasks/text_safety: blank, too long, not judged) get a message instead
      and coalesce(rule, '') not in ('blank_query', 'query_too_long', 'unsupported_language', 'not_english')
),

answers as (
    select
        results.run_id,
        results.query_id,
        count(*)                                                    as n_rows,
        count(results.image)                                        as n_photos,
        bool_or(results.shown)                                      as any_shown,
        bool_and(results.display = '{{ var("disclaimer") }}')       as all_disclaimer
    from {{ source('history', 'search_results') }} as results
    join flagged using (run_id, query_id)
    group by all
)

select * from answers
where n_rows <> 1 or n_photos > 0 or any_shown or not all_disclaimer
