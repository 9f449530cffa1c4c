-- One row per (photo, caption) judged by three experts on a 1..4 scale
-- (1 = no match ... 4 = full match).
with source as (
    select * from {{ source('raw', 'raw_expert_annotations') }}
),

renamed as (
    select
        image,
        query_id                                        as caption_id,
        expert_1,
        expert_2,
        expert_3,
        (expert_1 + expert_2 + expert_3) / 3.0          as expert_mean
    from source
),

final as (
    select
        *,
        -- Map the 1..4 scale onto 0..1 so it can be pooled with the crowd's share of yes votes.
        (expert_mean - 1.0) / 3.0                       as expert_score
    from renamed
)

select * from final
