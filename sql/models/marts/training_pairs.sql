-- The judged pairs the relevance heads may learn from: relevance_targets minus every
-- pair in training_exclusions (children under 16 are never processed).
with targets as (
    select * from {{ ref('relevance_targets') }}
),

excluded as (
    select image, caption_id from {{ ref('training_exclusions') }}
),

final as (
    select targets.*
    from targets
    anti join excluded using (image, caption_id)
)

select * from final order by image, caption_id
