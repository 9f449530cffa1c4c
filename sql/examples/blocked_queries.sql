-- Saved queries the latest run answered with the disclaimer only, with the lexicon rule
-- and the words that blocked each one (for a compliance officer's audit).
with results as (
    select * from latest_search_results
    where rank is null
),

flags as (
    select * from text_flags
    where text_kind = 'query'
),

final as (
    select
        results.query_id,
        results.query_text,
        flags.rule,
        flags.matched,
        flags.lexicon_version,
        results.display
    from results
    join flags
        on flags.run_id = results.run_id and flags.text_id = results.query_id
)

select * from final
order by rule, query_id;
