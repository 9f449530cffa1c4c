-- The same results without the DuckDB file: the latest run's Parquet exports, read
-- straight from exports/ (run this from the warehouse folder).  Top-3 per query.
with results as (
    select * from read_parquet('exports/search_results.parquet')
),

final as (
    select run_id, query_id, query_text, rank, display, round(score, 4) as score
    from results
    where rank <= 3 or rank is null
)

select * from final
order by query_id, rank nulls first
limit 30;
